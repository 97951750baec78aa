"""Active FLOPs and parameters of models with task-routed mixture-of-experts layers.

FLOPs come from mmengine's :class:`~mmengine.analysis.FlopAnalyzer` (a jit trace of
one forward), with its convention: one multiply-add is one FLOP, elementwise ops
(add, GELU, softmax, gate products) count 0, norms about 5 per element. The trace
runs the MoE layers as they compute, each expert's matmul on the rows routed to it,
so the count is the ACTIVE FLOPs; every token having exactly k slots, a routed
layer's count depends on the input's shape only, not on its content or routing. :data:`MOE_FLOP_HANDLES`
adds what the stock handles lack: ``scaled_dot_product_attention`` (also the dense
attention of mmpretrain's ViT, which mmengine counts as 0), ``torch._grouped_mm``
(the grouped expert path on Hopper GPUs), and the dispatch's sorting and data
movement as 0 FLOPs.

Every routed layer's FLOPs are affine in its k: the router and shared parts (the
key/value projection of a mixture of attention heads) are fixed, everything else
runs once per (token, expert) slot. :attr:`Complexity.all_experts_flops` scales the
slot part to k = E, the FLOPs had every expert run on every token.

Parameters (:class:`ParamCount`): ``total`` of the model; ``task``: those one task's
inference can use (shared parts, its routers and task embedding, its enabled
experts, its branch of a multi-task model); ``active``: per token (shared parts, its
routers, k of each layer's E experts).
"""
import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from mmengine.analysis import FlopAnalyzer
from mmengine.analysis.jit_handles import get_shape
from mmengine.analysis.print_helper import _format_size
from mmengine.model import BaseModel

from mod_squad.models import ModSquadMultiTaskModel, ModSquadViT
from mod_squad.moe import expert_usage_modules, routed_layers


def sdpa_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """``scaled_dot_product_attention(q (..., L, D), k (..., S, D), v (..., S, Dv))``:
    ``q @ k^T`` and ``attn @ v``, ``prod(...) * L * S * (D + Dv)`` (masks ignored)."""
    q, k, v = (get_shape(x) for x in inputs[:3])
    out = get_shape(outputs[0])
    return math.prod(out[:-1]) * k[-2] * (q[-1] + v[-1])


def grouped_mm_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """``torch._grouped_mm(x (M, K), w (E, K, N), offs)`` -> (M, N): ``M * K * N``
    (each row through its own group's matrix; also (G, M, K) x (G, K, N))."""
    x = get_shape(inputs[0])
    return math.prod(get_shape(outputs[0])) * x[-1]


#: Handles added to mmengine's defaults (None: an op of 0 FLOPs, not warned about).
MOE_FLOP_HANDLES: Dict[str, Optional[Callable]] = {
    'aten::scaled_dot_product_attention': sdpa_flop_jit,
    'aten::_grouped_mm': grouped_mm_flop_jit,
    # the dispatch's sorting and data movement
    'aten::sort': None,
    'aten::index_select': None,
    'aten::index_add_': None,
    'aten::scatter_': None,
    'aten::scatter_add_': None,
    'aten::empty_like': None,
    'aten::numel': None,
}


def moe_flop_analyzer(model: nn.Module, inputs: Tuple) -> FlopAnalyzer:
    """mmengine's FlopAnalyzer with :data:`MOE_FLOP_HANDLES`, without its warning
    about modules the trace never called (e.g. the other tasks' branches)."""
    analyzer = FlopAnalyzer(model, inputs).set_op_handle(**MOE_FLOP_HANDLES)
    return analyzer.uncalled_modules_warnings(False)


@dataclass
class ParamCount:
    """Parameters of a model: ``total``; ``task``: those one task can use;
    ``active``: those one token of the task uses."""
    total: int
    task: int
    active: int


@dataclass
class Complexity:
    """Complexity of one task's forward.

    Attributes:
        task (str, optional): The task (None for a model without routed layers).
        input_shape (tuple): (B, 3, H, W) the model ran on (after preprocessing).
        flops (int): Active FLOPs (one multiply-add = one FLOP).
        all_experts_flops (int): FLOPs had every expert run on every token.
        params (ParamCount): Total, task and active parameters.
        analyzer (FlopAnalyzer): The trace, e.g. for mmengine's
            ``complexity_stats_table(analyzer)``.
    """
    task: Optional[str]
    input_shape: Tuple[int, ...]
    flops: int
    all_experts_flops: int
    params: ParamCount
    analyzer: FlopAnalyzer


def mod_squad_backbone(model: nn.Module) -> Optional[ModSquadViT]:
    """The ModSquadViT of ``model`` (the model itself, a stock model's backbone or a
    multi-task model's shared backbone); None if it has none."""
    return next((m for m in model.modules() if isinstance(m, ModSquadViT)), None)


def model_tasks(model: nn.Module) -> Tuple[Optional[str], ...]:
    """The tasks of ``model``: a multi-task model's branches, else the tasks of its
    ModSquadViT or of its first routed layer; ``(None, )`` for a model without
    routed layers."""
    if isinstance(model, ModSquadMultiTaskModel):
        return model.task_names
    backbone = mod_squad_backbone(model)
    if backbone is not None:
        return backbone.task_names
    layer = next(iter(routed_layers(model).values()), None)
    return (None, ) if layer is None else layer.task_names


def _check_task(model: nn.Module, task: Optional[str]) -> None:
    tasks = model_tasks(model)
    if task not in tasks:
        raise ValueError(f'Unknown task {task!r} for {type(model).__name__}; its tasks '
                         f'are {list(tasks)}.')


def count_parameters(model: nn.Module, task: Optional[str] = None) -> ParamCount:
    """Total, task and active parameters (see :class:`ParamCount`).

    Another task's parameters are those a ``ParameterDict`` or ``ModuleDict`` holds
    under its name (routers ``router.weight.<task>``, ``task_embed.<task>``, a
    multi-task model's ``branches.<task>``). A routed layer of E experts, of which
    the task enables n and runs k per token, counts n / E of its per-expert
    parameters (:meth:`~mod_squad.moe.RoutedLayer.expert_parameters`) for the
    task and k / E as active.
    """
    _check_task(model, task)
    total = sum(p.numel() for p in model.parameters())
    if task is None:
        return ParamCount(total, total, total)
    layers = routed_layers(model).values()
    other_tasks = set(model_tasks(model)).union(
        *(layer.task_names for layer in layers)) - {task}
    others = {
        id(p)
        for m in model.modules() if isinstance(m, (nn.ParameterDict, nn.ModuleDict))
        for key, child in m.items() if key in other_tasks
        for p in ([child] if isinstance(child, nn.Parameter) else child.parameters())
    }
    reachable = total - sum(p.numel() for p in model.parameters() if id(p) in others)
    disabled = inactive = 0
    for layer in layers:
        per_expert = sum(p.numel() for p in layer.expert_parameters()) // layer.num_experts
        disabled += per_expert * (layer.num_experts - len(layer.enabled_experts_of(task)))
        inactive += per_expert * (layer.num_experts - layer.top_k_of(task))
    return ParamCount(total, reachable - disabled, reachable - inactive)


def all_experts_flops(analyzer: FlopAnalyzer, model: nn.Module,
                      task: Optional[str]) -> int:
    """The traced FLOPs with every routed layer's slot part scaled from k to E
    experts per token (fixed part: the router and children without per-expert
    parameters, e.g. a MoA's shared key/value projection)."""
    flops = analyzer.by_module()
    total = analyzer.total()
    for name, layer in routed_layers(model).items():
        experts = {id(p) for p in layer.expert_parameters()}
        fixed = sum(
            flops[analyzer.canonical_module_name(f'{name}.{child_name}')]
            for child_name, child in layer.named_children()
            if not any(id(p) in experts for p in child.parameters()))
        slots = flops[analyzer.canonical_module_name(name)] - fixed
        k = layer.top_k_of(task)
        total += slots * (layer.num_experts - k) // k
    return total


def _traced_forward(model: nn.Module, task: Optional[str],
                    data_samples: Optional[list]) -> Callable:
    """What the trace runs on the inputs: the task's branch of a multi-task model,
    or the model's own forward, in OpenMMLab's ``'tensor'`` mode for a BaseModel."""
    if isinstance(model, ModSquadMultiTaskModel):
        branch = model.branches[task]
        return lambda x: branch(x, data_samples, mode='tensor')
    # the class's forward: the instance attribute is the traced callable itself
    forward = type(model).forward.__get__(model)
    if isinstance(model, BaseModel):
        return lambda x: forward(x, data_samples, mode='tensor')
    return forward


@contextlib.contextmanager
def _analysis_state(model: nn.Module, task: Optional[str],
                    data_samples: Optional[list]) -> Iterator[None]:
    """``model`` in eval mode, without grad, running ``task`` through
    :func:`_traced_forward` as its forward (as mmdet's get_flops patches it); its
    task, mode, ``requires_grad`` flags and expert usage statistics are restored
    afterwards. No parameter requires grad during the trace: the tracer takes the
    parameters from the state dict, where a split expert stack (some experts
    training, :func:`~mod_squad.moe.train_experts`) is one stock tensor, and refuses
    its trainable rows as constants requiring grad."""
    usage = {name: [b.clone() for b in m.buffers()]
             for name, m in expert_usage_modules(model).items()}
    requires_grad = [(p, p.requires_grad) for p in model.parameters()]
    backbone = mod_squad_backbone(model)
    single_task = backbone is not None and not isinstance(model, ModSquadMultiTaskModel)
    previous_task = backbone.task if single_task else None
    training = model.training
    model.forward = _traced_forward(model, task, data_samples)
    model.eval()
    model.requires_grad_(False)
    if single_task:
        backbone.set_task(task)
    try:
        with torch.no_grad():
            yield
    finally:
        del model.forward
        model.train(training)
        for param, flag in requires_grad:
            param.requires_grad_(flag)
        if single_task:
            backbone.set_task(previous_task)
        for name, m in expert_usage_modules(model).items():
            for buffer, saved in zip(m.buffers(), usage[name]):
                buffer.copy_(saved)


def analyze_complexity(model: nn.Module,
                       inputs: torch.Tensor,
                       task: Optional[str] = None,
                       data_samples: Optional[list] = None) -> Complexity:
    """Active FLOPs and parameters of ``task``'s forward on ``inputs``.

    Args:
        model (nn.Module): A :class:`ModSquadMultiTaskModel` (the task's branch runs),
            a stock mmpretrain / mmdet / mmseg model (e.g. with a ModSquadViT
            backbone; ``forward(inputs, data_samples, mode='tensor')`` runs, no
            post-processing, as in the toolboxes' get_flops tools), or a module
            whose forward takes ``inputs`` alone (e.g. a ModSquadViT).
        inputs (Tensor): (B, 3, H, W) preprocessed images.
        task (str, optional): Whose routers run; default: the model's first task.
        data_samples (list, optional): The batch's data samples (a two-stage
            detector's tensor mode reads their metainfo).

    Returns:
        Complexity: FLOPs (active and all experts) and parameters.
    """
    task = model_tasks(model)[0] if task is None else task
    _check_task(model, task)
    analyzer = moe_flop_analyzer(model, (inputs, ))
    with _analysis_state(model, task, data_samples):
        flops = analyzer.total()  # traces now; later reads reuse the trace
    return Complexity(
        task=task,
        input_shape=tuple(inputs.shape),
        flops=flops,
        all_experts_flops=all_experts_flops(analyzer, model, task),
        params=count_parameters(model, task),
        analyzer=analyzer)


def drop_auxiliary_heads(model: nn.Module) -> nn.Module:
    """``model`` without mmseg's auxiliary heads (they run in training only; mmseg's
    get_flops tool removes them too)."""
    for module in model.modules():
        if getattr(module, 'auxiliary_head', None) is not None:
            module.auxiliary_head = None
    return model


def task_branch(model: nn.Module, task: Optional[str]) -> nn.Module:
    """The stock model that runs ``task``: a multi-task model's branch, else itself."""
    return model.branches[task] if isinstance(model, ModSquadMultiTaskModel) else model


def data_sample_type(model: nn.Module) -> type:
    """The data sample class of the toolbox ``model`` comes from."""
    toolbox = type(model).__module__.split('.')[0]
    if toolbox == 'mmdet':
        from mmdet.structures import DetDataSample
        return DetDataSample
    if toolbox == 'mmseg':
        from mmseg.structures import SegDataSample
        return SegDataSample
    if toolbox == 'mmpretrain':
        from mmpretrain.structures import DataSample
        return DataSample
    raise TypeError(f'{type(model).__name__} is not an mmdet, mmseg or mmpretrain '
                    'model: give its preprocessed inputs to analyze_complexity.')


def dummy_batch(model: nn.Module, task: Optional[str],
                shape: Sequence[int]) -> dict:
    """One random (3, H, W) uint8 image (seed 0) through ``task``'s stock data
    preprocessor (which may pad it): ``dict(inputs=(1, 3, H', W'),
    data_samples=[...])``. Active FLOPs depend on the shape only."""
    _check_task(model, task)
    branch = task_branch(model, task)
    height, width = shape
    image = torch.randint(
        0, 256, (3, height, width), dtype=torch.uint8,
        generator=torch.Generator().manual_seed(0))
    sample = data_sample_type(branch)(metainfo=dict(
        ori_shape=(height, width), img_shape=(height, width),
        pad_shape=(height, width), scale_factor=(1., 1.)))
    with torch.no_grad():
        data = branch.data_preprocessor(
            dict(inputs=[image], data_samples=[sample]), False)
    return dict(inputs=data['inputs'], data_samples=data['data_samples'])


def analyze_dummy_image(model: nn.Module, task: Optional[str],
                        shape: Sequence[int]) -> Complexity:
    """:func:`analyze_complexity` of ``task`` on one :func:`dummy_batch` image of
    ``shape`` (H, W), what ``get_flops.py`` reports."""
    data = dummy_batch(model, task, shape)
    return analyze_complexity(model, data['inputs'], task, data['data_samples'])


def default_shape(model: nn.Module) -> Tuple[int, int]:
    """(H, W) its ModSquadViT was built for (``img_size``), else 224 x 224 (the
    default of mmpretrain's get_flops)."""
    backbone = mod_squad_backbone(model)
    if backbone is None or backbone.patch_embed.init_input_size is None:
        return (224, 224)
    return tuple(backbone.patch_embed.init_input_size)


def complexity_table(results: Sequence[Complexity]) -> str:
    """A markdown table, one row per task: input, active and all-expert FLOPs,
    total, task and active parameters."""
    rows = [('task', 'input shape', 'FLOPs (active)', 'FLOPs (all experts)', 'params',
             'params (task)', 'params (active)')]
    for c in results:
        rows.append((str(c.task), 'x'.join(map(str, c.input_shape[-2:])),
                     *(_format_size(n) for n in (c.flops, c.all_experts_flops,
                                                 c.params.total, c.params.task,
                                                 c.params.active))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ['| ' + ' | '.join(v.ljust(w) for v, w in zip(row, widths)) + ' |'
             for row in rows]
    lines.insert(1, '|' + '|'.join(':' + '-' * (w + 1) for w in widths) + '|')
    return '\n'.join(lines)
