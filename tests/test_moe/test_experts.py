"""grouped_linear / GroupedExperts: the loop reference, the fused and grouped_mm paths,
gradients, saved memory."""
import pytest
import torch
import torch.nn.functional as F

from mod_squad.moe import (GroupedExperts, MoAttention, MoEMLP, RouterConfig,
                           TokenDispatch, grouped_linear)
from mod_squad.moe.experts import grouped_mm_supported


def _sorted_rows(num_tokens, num_experts, top_k, width, seed=0):
    generator = torch.Generator().manual_seed(seed)
    indices = torch.stack([
        torch.randperm(num_experts, generator=generator)[:top_k]
        for _ in range(num_tokens)
    ])
    d = TokenDispatch(indices, num_experts)
    x = torch.randn(num_tokens * top_k, width, generator=generator)
    return d, x


def _cpu_grouped_mm_works():
    if not hasattr(torch, '_grouped_mm'):
        return False
    try:
        torch._grouped_mm(torch.randn(2, 8), torch.randn(2, 8, 8),
                          offs=torch.tensor([1, 2], dtype=torch.int32))
    except RuntimeError:
        return False
    return True


@pytest.mark.parametrize('with_bias', [True, False])
def test_loop_matches_per_row_reference(with_bias):
    d, x = _sorted_rows(5, 6, 2, 8)
    weight = torch.randn(6, 8, 3, requires_grad=True)
    bias = torch.randn(6, 3, requires_grad=True) if with_bias else None
    out = grouped_linear(x, weight, bias, d, impl='loop')
    expected = torch.stack([
        x[i] @ weight[e] + (bias[e] if with_bias else 0)
        for i, e in enumerate(d.expert_ids.tolist())
    ])
    torch.testing.assert_close(out, expected)
    assert 0 in d.splits  # an expert without rows


@pytest.mark.skipif(not _cpu_grouped_mm_works(), reason='no torch._grouped_mm on CPU')
@pytest.mark.parametrize('num_tokens', [1, 7])
def test_grouped_mm_matches_loop(num_tokens):
    d, x, gates = _tokens(num_tokens, 8, 3, 16, seed=num_tokens)
    experts = GroupedExperts(8, 16, 24)
    upstream = torch.randn(x.shape)
    results = {}
    for impl in ('loop', 'grouped_mm'):
        experts.zero_grad()
        xi = x.clone().requires_grad_()
        out = experts(xi, d, gates, impl)
        (out * upstream).sum().backward()
        results[impl] = [out, xi.grad] + [p.grad for p in experts.parameters()]
    for a, b in zip(results['grouped_mm'], results['loop']):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def _tokens(num_tokens, num_experts, top_k, width, seed=0):
    """A dispatch of ``num_tokens`` tokens, their (N, C) rows and (N, k) gates."""
    d, _ = _sorted_rows(num_tokens, num_experts, top_k, width, seed)
    generator = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(num_tokens, width, generator=generator)
    return d, x, torch.rand(num_tokens, top_k, generator=generator)


@pytest.mark.parametrize('impl', ['loop', 'fused'])
def test_experts_match_reference_and_unused_experts_get_zero_grads(impl):
    d, x, gates = _tokens(3, 8, 2, 8)
    experts = GroupedExperts(8, 8, 4)
    x.requires_grad_()
    out = experts(x, d, gates, impl)
    out.sum().backward()
    ex = experts
    indices = d.expert_ids[d.inverse].view(3, 2)  # each token's experts, in route order
    expected = torch.stack([
        sum(g * (F.gelu(x[i] @ ex.w1[e] + ex.b1[e]) @ ex.w2[e] + ex.b2[e])
            for e, g in zip(indices[i].tolist(), gates[i]))
        for i in range(3)
    ])
    torch.testing.assert_close(out, expected)
    unused = (d.counts == 0).nonzero().flatten()
    assert len(unused) >= 2
    for p in experts.parameters():
        assert p.grad is not None and p.grad[unused].eq(0).all()


def _grads(fn, inputs):
    """fn(*inputs) and the gradients of a fixed projection of it w.r.t. ``inputs``."""
    inputs = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*inputs)
    upstream = torch.linspace(-1, 1, out.numel()).view(out.shape)
    grads = torch.autograd.grad((out.float() * upstream).sum(), inputs)
    return [out, *grads]


@pytest.mark.parametrize('gather', [False, True])
@pytest.mark.parametrize('reduce', [False, True])
@pytest.mark.parametrize('with_scale', [False, True])
@pytest.mark.parametrize('with_bias', [False, True])
def test_fused_matches_loop_values_and_gradients(gather, reduce, with_scale, with_bias):
    """Every combination of gather / scale / reduce / bias; an expert without rows."""
    d, rows = _sorted_rows(4, 8, 2, 8, seed=3)
    _, tokens, gates = _tokens(4, 8, 2, 8, seed=3)
    x = tokens if gather else rows
    weight, bias = torch.randn(8, 8, 3), torch.randn(8, 3)
    scale = d.gather_slots(gates.reshape(-1, 1))
    inputs = [x, weight] + ([bias] if with_bias else []) + ([scale] if with_scale else [])

    def run(impl):

        def fn(x, weight, *rest):
            rest = list(rest)
            b = rest.pop(0) if with_bias else None
            s = rest.pop(0) if with_scale else None
            return grouped_linear(x, weight, b, d, impl, gather=gather, scale=s,
                                  reduce=reduce)

        return _grads(fn, inputs)

    assert 0 in d.splits
    for fused, loop in zip(run('fused'), run('loop'), strict=True):
        torch.testing.assert_close(fused, loop)


def test_fused_computes_no_gradient_of_frozen_weights():
    d, x, gates = _tokens(5, 4, 2, 8)
    experts = GroupedExperts(4, 8, 6)
    experts.w1.requires_grad_(False)
    experts.b2.requires_grad_(False)
    x.requires_grad_()
    experts(x, d, gates, 'fused').sum().backward()
    assert experts.w1.grad is None and experts.b2.grad is None
    assert experts.w2.grad is not None and x.grad is not None


@pytest.mark.parametrize('impl', ['loop', 'fused'])
def test_fused_keeps_no_per_slot_copy_of_the_tokens(impl):
    """The loop reference keeps the gathered (M, C) rows for backward; the fused path
    keeps the (N, C) tokens and indices only (and nothing C-wide per slot)."""
    d, x, gates = _tokens(20, 4, 3, 32)
    x.requires_grad_()
    weight = torch.randn(4, 32, 4, requires_grad=True)  # smaller than the tokens
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t,
                                                  lambda t: t):
        grouped_linear(x, weight, None, d, impl, gather=True)
    largest = max(t.untyped_storage().nbytes() for t in saved)
    assert largest == (60 * 32 * 4 if impl == 'loop' else 20 * 32 * 4)  # (M | N, C)


def _backward_nodes(tensor):
    nodes, stack, seen = [], [tensor.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        nodes.append(type(node).__name__)
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    return nodes


def test_loop_splits_each_weight_stack_once():
    """``w[e]`` per expert would zero-fill a whole (E, in, out) gradient per expert in
    backward (SelectBackward); the loop unbinds each stack once instead."""
    d, x, gates = _tokens(6, 8, 2, 8)
    nodes = _backward_nodes(GroupedExperts(8, 8, 4)(x, d, gates, 'loop'))
    assert 'SelectBackward0' not in nodes
    assert nodes.count('UnbindBackward0') == 4  # w1, b1, w2, b2


def test_auto_uses_the_fused_path_on_cpu_and_rejects_unknown_impl():
    d, x = _sorted_rows(4, 4, 2, 8)
    w = torch.randn(4, 8, 8)
    assert not grouped_mm_supported(x, w)
    assert torch.equal(
        grouped_linear(x, w, None, d), grouped_linear(x, w, None, d, impl='fused'))
    with pytest.raises(ValueError, match='impl'):
        grouped_linear(x, w, None, d, impl='bmm')


def _forward_backward(layer, x, impl, device_type):
    layer.router_cfg.impl = impl
    layer.zero_grad()
    x = x.detach().clone().requires_grad_()
    with torch.autocast(device_type, dtype=torch.bfloat16):
        y = layer(x, 'a')
    (y.float() * torch.linspace(-1, 1, y.numel(), device=x.device).view(y.shape)).sum(
    ).backward()
    return [y, x.grad] + [p.grad for p in layer.parameters()]


@pytest.mark.parametrize('impl', [
    'fused',
    pytest.param('grouped_mm', marks=pytest.mark.skipif(
        not _cpu_grouped_mm_works(), reason='no torch._grouped_mm on CPU'))
])
@pytest.mark.parametrize('layer_type', [MoEMLP, MoAttention])
def test_layer_under_bf16_autocast_matches_loop(layer_type, impl):
    torch.manual_seed(0)
    args = (16, 8, 2, 16) if layer_type is MoEMLP else (16, 8, 2, 8)
    layer = layer_type(*args, ('a', ), router_cfg=RouterConfig(init='trunc_normal'))
    x = torch.randn(2, 6, 16)
    loop = _forward_backward(layer, x, 'loop', 'cpu')
    fast = _forward_backward(layer, x, impl, 'cpu')
    assert fast[0].dtype == torch.bfloat16
    for a, b in zip(fast, loop, strict=True):
        torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
@pytest.mark.parametrize('layer_type', [MoEMLP, MoAttention])
def test_cuda_grouped_mm_path_has_no_host_sync(layer_type):
    torch.manual_seed(0)
    args = (64, 8, 2, 64) if layer_type is MoEMLP else (64, 8, 2, 32)
    layer = layer_type(*args, ('a', ),
                       router_cfg=RouterConfig(init='trunc_normal')).cuda()
    x = torch.randn(2, 50, 64, device='cuda')
    weight = layer.experts.w1 if layer_type is MoEMLP else layer.q_proj
    if not grouped_mm_supported(x.view(-1, 64).bfloat16(), weight):
        pytest.skip('no fused torch._grouped_mm on this GPU')
    loop = _forward_backward(layer, x, 'loop', 'cuda')
    _forward_backward(layer, x, 'grouped_mm', 'cuda')  # warm-up (lazy init may sync)
    torch.cuda.set_sync_debug_mode('error')
    try:
        grouped = _forward_backward(layer, x, 'grouped_mm', 'cuda')
    finally:
        torch.cuda.set_sync_debug_mode('default')
    for a, b in zip(grouped, loop):
        torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-3)
