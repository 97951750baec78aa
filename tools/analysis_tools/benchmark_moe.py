"""Time and memory of one forward + backward of MoE layers against their baselines.

Cases (``--cases``, default all available) and the baseline of their ratio:

- ``dense_mlp``: ViT MLP ``C -> k*H -> C`` (GELU), the same active FLOPs as the MoE MLP.
- ``moe_mlp`` (vs ``dense_mlp``): :class:`mod_squad.moe.MoEMLP`, E experts
  ``C -> H -> C``, top-k, random (not zero) router initialisation so that tokens spread
  over the experts.
- ``fairscale_top2`` / ``fairscale_top2_equal_flops`` (vs ``dense_mlp``): fairscale's
  ``MOELayer`` with ``Top2Gate`` (GShard einsum dispatch, capacity 2 tokens per expert
  on average) and E experts of hidden H, or of hidden k*H/2 (the active FLOPs of the
  MoE MLP). Needs fairscale and a process group (a one-process gloo group is started);
  the token count is rounded up to a multiple of E (MOELayer's requirement).
- ``dense_attention``: ViT multi-head self-attention, ``--num-heads`` heads.
- ``moa`` (vs ``dense_attention``): :class:`mod_squad.moe.MoAttention`,
  ``--attn-experts`` heads of width ``--attn-head-dims`` (default C / heads; the
  authors' ViT-B: 128), ``--attn-top-k`` per token.
- ``dense_vit``: mmpretrain's ``VisionTransformer`` (``--num-layers`` blocks of width
  ``--embed-dims``) on ``--batch`` images of 224 px (for 197 tokens).
- ``mod_squad_vit`` (vs ``dense_vit``): ``ModSquadViT`` of the same width and depth,
  MoA on even and MoE MLP on odd blocks with the settings above. Both backbone cases
  need OpenMMLab and are left out without it.

Timing: ``--warmup`` steps per case, then ``--rounds`` rounds that each run every case
for ``--iters`` steps in turn (interleaved); a case's time is the median over rounds of
its mean step time. Peak memory: on CUDA ``max_memory_allocated`` above the allocation
before the step; on CPU the growth of the process's peak resident memory (Linux VmHWM,
reset before the step) during the first step of a fresh subprocess, which includes
allocator and workspace overhead. Saved activations: the tensors autograd keeps for
backward during one forward (``mod_squad.timing.saved_activations_mib``), the same on
every machine.

More cases register with :func:`register_case`.

Example::

    python tools/analysis_tools/benchmark_moe.py --threads 1 --rounds 7
"""
import argparse
import json
import os.path as osp
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Callable, Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
Step = Callable[[], None]


def import_moe():
    """``mod_squad.moe`` (plain PyTorch), from this source tree when the package is
    not installed."""
    source = osp.join(REPO, 'projects')
    if source not in sys.path:
        sys.path.append(source)
    import mod_squad.moe as moe
    return moe


def import_timing():
    """``mod_squad.timing`` (plain PyTorch): the interleaved timing shared with the
    model benchmark (``benchmark.py``)."""
    import_moe()
    import mod_squad.timing as timing
    return timing


class CaseUnavailable(Exception):
    """Raised by a case builder whose dependencies are missing."""


@dataclass
class BenchCase:
    name: str
    description: str
    build: Callable[[argparse.Namespace, torch.device], Step]
    baseline: Optional[str] = None


CASES: Dict[str, BenchCase] = {}


def register_case(name: str, description: str, baseline: Optional[str] = None):
    """Register ``build(args, device) -> step``; ``step()`` runs one forward and
    backward (including zeroing the gradients it produces). ``baseline`` names the case
    whose time is the denominator of this case's ratio."""

    def wrap(build):
        CASES[name] = BenchCase(name, description, build, baseline)
        return build

    return wrap


def make_step(module: nn.Module, x: torch.Tensor, forward: Callable,
              args: argparse.Namespace) -> Step:
    """One forward + backward of ``forward(module, x)`` with a fixed output gradient."""
    x = x.requires_grad_()
    dtype = torch.bfloat16 if args.amp else None
    with torch.no_grad(), torch.autocast(x.device.type, dtype, enabled=args.amp):
        grad = torch.randn_like(forward(module, x))

    def step():
        module.zero_grad(set_to_none=True)
        x.grad = None
        with torch.autocast(x.device.type, dtype, enabled=args.amp):
            out = forward(module, x)
        out.backward(grad)

    return step


def tokens(args, device, multiple=1) -> torch.Tensor:
    """(B, N, C) input; for ``multiple`` > 1, (multiple, -1, C) with the token count
    rounded up to a multiple of ``multiple``."""
    n = args.batch * args.seq_len
    if multiple == 1:
        return torch.randn(args.batch, args.seq_len, args.embed_dims, device=device)
    n = -(-n // multiple) * multiple
    return torch.randn(multiple, n // multiple, args.embed_dims, device=device)


@register_case('dense_mlp', 'dense MLP C -> k*H -> C (equal active FLOPs)')
def build_dense_mlp(args, device):
    hidden = args.top_k * args.expert_hidden
    mlp = nn.Sequential(
        nn.Linear(args.embed_dims, hidden), nn.GELU(),
        nn.Linear(hidden, args.embed_dims)).to(device)
    return make_step(mlp, tokens(args, device), lambda m, x: m(x), args)


def router_cfg(args) -> dict:
    """Routers of the mod_squad cases: random (not zero) initialisation, so that tokens
    spread over the experts, and the expert path of ``--impl``."""
    return dict(init='trunc_normal', impl=args.impl)


@register_case('moe_mlp', 'mod_squad MoEMLP, E experts C -> H -> C, top-k, dropless',
               baseline='dense_mlp')
def build_moe_mlp(args, device):
    moe = import_moe()
    layer = moe.MoEMLP(args.embed_dims, args.num_experts, args.top_k,
                       args.expert_hidden, ('task', ),
                       router_cfg=moe.RouterConfig(**router_cfg(args))).to(device)
    return make_step(layer, tokens(args, device), lambda m, x: m(x, 'task'), args)


def init_single_process_group():
    import torch.distributed as dist
    if not dist.is_initialized():
        store = osp.join(tempfile.mkdtemp(prefix='benchmark_moe_'), 'store')
        dist.init_process_group(
            'gloo', init_method=f'file://{store}', rank=0, world_size=1)


def build_fairscale(args, device, expert_hidden):
    try:
        from fairscale.nn.moe import MOELayer, Top2Gate
    except ImportError as e:
        raise CaseUnavailable(f'fairscale: {e}') from None
    init_single_process_group()
    experts = nn.ModuleList(
        nn.Sequential(
            nn.Linear(args.embed_dims, expert_hidden), nn.GELU(),
            nn.Linear(expert_hidden, args.embed_dims))
        for _ in range(args.num_experts))
    layer = MOELayer(Top2Gate(args.embed_dims, args.num_experts), experts).to(device)
    x = tokens(args, device, multiple=args.num_experts)
    return make_step(layer, x, lambda m, x: m(x), args)


@register_case('fairscale_top2', 'fairscale MOELayer + Top2Gate, E experts of hidden H',
               baseline='dense_mlp')
def build_fairscale_same_experts(args, device):
    return build_fairscale(args, device, args.expert_hidden)


@register_case('fairscale_top2_equal_flops',
               'fairscale MOELayer + Top2Gate, E experts of hidden k*H/2',
               baseline='dense_mlp')
def build_fairscale_equal_flops(args, device):
    return build_fairscale(args, device, args.top_k * args.expert_hidden // 2)


class SelfAttention(nn.Module):
    """ViT multi-head self-attention: (B, N, C) -> (B, N, C)."""

    def __init__(self, embed_dims, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(embed_dims, 3 * embed_dims)
        self.proj = nn.Linear(embed_dims, embed_dims)

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v)
        return self.proj(o.transpose(1, 2).reshape(B, N, C))


@register_case('dense_attention', 'multi-head self-attention, --num-heads heads')
def build_dense_attention(args, device):
    attn = SelfAttention(args.embed_dims, args.num_heads).to(device)
    return make_step(attn, tokens(args, device), lambda m, x: m(x), args)


@register_case('moa', 'mod_squad MoAttention, shared key/value, top-k of E heads',
               baseline='dense_attention')
def build_moa(args, device):
    moe = import_moe()
    layer = moe.MoAttention(args.embed_dims, args.attn_experts, args.attn_top_k,
                            attn_head_dims(args), ('task', ),
                            router_cfg=moe.RouterConfig(**router_cfg(args))).to(device)
    return make_step(layer, tokens(args, device), lambda m, x: m(x, 'task'), args)


def images(args, device) -> torch.Tensor:
    """(B, 3, S, S) images whose patch grid (+ cls token) gives --seq-len tokens."""
    side = 16 * int((args.seq_len - 1)**0.5)
    return torch.randn(args.batch, 3, side, side, device=device)


def openmmlab_backbone(build):
    """A backbone case: needs OpenMMLab, unavailable (not failing) without it."""

    def wrapped(args, device):
        try:
            import mod_squad.models  # noqa: F401
            from mmpretrain.models import VisionTransformer
        except ImportError as e:
            raise CaseUnavailable(f'OpenMMLab: {e}') from None
        backbone = build(args, VisionTransformer).to(device)
        return make_step(backbone, images(args, device), lambda m, x: m(x)[0], args)

    return wrapped


@register_case('dense_vit', "mmpretrain's VisionTransformer (arch from --embed-dims)")
@openmmlab_backbone
def build_dense_vit(args, vit_cls):
    return vit_cls(arch=vit_arch(args), img_size=224, out_type='cls_token')


@register_case('mod_squad_vit', 'ModSquadViT: MoA on even, MoE MLP on odd blocks',
               baseline='dense_vit')
@openmmlab_backbone
def build_mod_squad_vit(args, vit_cls):
    from mod_squad.models import ModSquadViT
    return ModSquadViT(
        arch=vit_arch(args), img_size=224, num_experts=args.num_experts,
        top_k=args.top_k, expert_hidden=args.expert_hidden,
        num_attn_experts=args.attn_experts, attn_top_k=args.attn_top_k,
        attn_head_dims=attn_head_dims(args), router_cfg=router_cfg(args))


def attn_head_dims(args) -> int:
    return args.attn_head_dims or args.embed_dims // args.num_heads


def vit_arch(args) -> dict:
    return dict(embed_dims=args.embed_dims, num_layers=args.num_layers,
                num_heads=args.num_heads, feedforward_channels=4 * args.embed_dims)


def time_cases(steps: Dict[str, Step], args, device) -> Dict[str, float]:
    """Median over interleaved rounds of the mean step time (ms) of each case
    (``--warmup``, ``--rounds``, ``--iters``)."""
    return import_timing().time_interleaved(steps, args.warmup, args.rounds, args.iters,
                                            device)


def _status_kib(field: str) -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    raise RuntimeError(f'{field} not in /proc/self/status')


def peak_memory_mib(step: Step, device) -> float:
    """Peak memory growth of one step, in this process (see the module docstring)."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # reset VmHWM to the current resident size
    base = _status_kib('VmRSS')
    step()
    return (_status_kib('VmHWM') - base) / 2**10


def memory_of_case(name: str, args, device) -> float:
    """CUDA: in this process. CPU: the first step of a fresh subprocess, so that
    memory freed by other cases (kept by the allocator) does not hide the peak."""
    if device.type == 'cuda':
        return peak_memory_mib(CASES[name].build(args, device), device)
    cmd = [sys.executable, __file__, '--memory-of', name] + sys.argv[1:]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])['peak_mib']


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--cases', nargs='+', default=None, choices=sorted(CASES),
                        help='cases to run (default: all)')
    parser.add_argument(
        '--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--amp', action='store_true', help='bf16 autocast')
    parser.add_argument('--impl', default='auto', choices=import_moe().experts.IMPLS,
                        help='expert path of the mod_squad layers')
    parser.add_argument('--embed-dims', type=int, default=768)
    parser.add_argument('--num-experts', type=int, default=16, help='MLP experts')
    parser.add_argument('--top-k', type=int, default=4, help='MLP experts per token')
    parser.add_argument('--expert-hidden', type=int, default=768)
    parser.add_argument('--num-heads', type=int, default=12)
    parser.add_argument('--num-layers', type=int, default=12, help='backbone blocks')
    parser.add_argument('--attn-experts', type=int, default=24)
    parser.add_argument('--attn-top-k', type=int, default=12)
    parser.add_argument('--attn-head-dims', type=int, default=None,
                        help='MoA head width (default: embed dims / heads)')
    parser.add_argument('--batch', type=int, default=8, help='images')
    parser.add_argument('--seq-len', type=int, default=197, help='tokens per image')
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--rounds', type=int, default=7)
    parser.add_argument('--iters', type=int, default=3, help='steps per case and round')
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads')
    parser.add_argument('--no-memory', action='store_true', help='skip peak memory')
    parser.add_argument('--memory-of', default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main():
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    if args.memory_of:  # subprocess of memory_of_case
        step = CASES[args.memory_of].build(args, device)
        print(json.dumps({'peak_mib': peak_memory_mib(step, device)}))
        return

    steps, skipped = {}, {}
    for name in args.cases or list(CASES):
        try:
            steps[name] = CASES[name].build(args, device)
        except CaseUnavailable as e:
            skipped[name] = str(e)
    times = time_cases(steps, args, device)

    gpu = f' ({torch.cuda.get_device_name(device)})' if device.type == 'cuda' else ''
    print(f'torch {torch.__version__}, device {device}{gpu}, '
          f'{torch.get_num_threads()} threads, amp={args.amp}, impl={args.impl}')
    print(f'tokens {args.batch} x {args.seq_len}, C={args.embed_dims}, MLP: E='
          f'{args.num_experts}, k={args.top_k}, H={args.expert_hidden}; attention: '
          f'{args.num_heads} heads, E={args.attn_experts}, k={args.attn_top_k}, '
          f'head width {attn_head_dims(args)}')
    print(f'median of {args.rounds} interleaved rounds x {args.iters} steps '
          '(forward + backward)\n')
    print(f'{"case":<28}{"ms/step":>9}{"ratio":>7}  {"vs":<16}{"peak MiB":>9}'
          f'{"saved MiB":>11}  description')
    for name in steps:
        baseline = CASES[name].baseline
        ratio = f'{times[name] / times[baseline]:.2f}' if baseline in times else '-'
        mem = saved = '-'
        if not args.no_memory:
            mem = f'{memory_of_case(name, args, device):.0f}'
            saved = f'{import_timing().saved_activations_mib(steps[name]):.1f}'
        print(f'{name:<28}{times[name]:>9.1f}{ratio:>7}  {baseline or "":<16}{mem:>9}'
              f'{saved:>11}  {CASES[name].description}')
    for name, why in skipped.items():
        print(f'{name:<28}{"skipped":>9}  {why}')
    if not args.no_memory:
        memory = 'CUDA max_memory_allocated' if device.type == 'cuda' else (
            'CPU peak resident memory growth, first step of a fresh process')
        print(f'\npeak MiB: {memory}. saved MiB: what autograd keeps for backward '
              '(parameters and input not counted).')


if __name__ == '__main__':
    main()
