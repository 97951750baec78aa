"""Plain-PyTorch mixture-of-experts core of Mod-Squad (imports only torch).

- :mod:`.config`: :class:`RouterConfig` (one per model, shared by its routed layers)
  and :class:`MoEAuxLossConfig`.
- :mod:`.router`: :class:`TaskRouter` (top-k routers, own parameters per task)
  and :class:`RouterOutput`.
- :mod:`.dispatch`: :class:`TokenDispatch`, dropless sort-by-expert reordering.
- :mod:`.experts`: :func:`grouped_linear` (the per-expert loop reference, the fused
  path of :mod:`.fused`, or ``torch._grouped_mm``) and :class:`GroupedExperts`.
- :mod:`.moe_mlp`: :class:`MoEMLP`; :mod:`.moa`: :class:`MoAttention`; both built on
  :class:`RoutedLayer` (:mod:`.routed_layer`).
- :mod:`.losses`: :class:`RouterAuxLoss`, :func:`collect_aux_losses`.
- :mod:`.stats`: :class:`ExpertUsage` (cumulative and running per-task expert usage)
  and its readers.
- :mod:`.selection`: :class:`ExpertSelection`, the experts a task keeps (pruning).
- :mod:`.partial`: :func:`train_experts`, some experts of a layer train, the others
  stay frozen (:class:`ExpertRows`).
- :mod:`.adapter`: :class:`VMTAdapter` and :class:`AdapterConfig`, a multi-task
  adapter (VMT-Adapter) beside the MLP of a block.
"""
from .adapter import AdapterConfig, VMTAdapter, adapter_modules
from .config import MoEAuxLossConfig, RouterConfig
from .dispatch import TokenDispatch
from .experts import GroupedExperts, grouped_linear, grouped_mm_supported
from .losses import (RouterAuxLoss, collect_aux_losses, mutual_information_loss,
                     switch_loss)
from .moa import MoAttention
from .moe_mlp import MoEMLP
from .partial import ExpertRows, expert_stacks, train_experts, trainable_experts
from .routed_layer import RoutedLayer, routed_layers
from .router import RouterOutput, TaskRouter, check_task_names
from .selection import ExpertSelection
from .stats import (ExpertUsage, all_reduce_expert_usage, experts_to_cover,
                    expert_usage_modules, num_experts_used, reset_expert_usage,
                    stack_expert_usage, usage_entropy, usage_share)

__all__ = [
    'RouterConfig', 'MoEAuxLossConfig', 'TaskRouter', 'RouterOutput',
    'check_task_names', 'TokenDispatch', 'GroupedExperts', 'grouped_linear',
    'grouped_mm_supported', 'RoutedLayer', 'routed_layers', 'MoEMLP', 'MoAttention', 'RouterAuxLoss',
    'collect_aux_losses', 'mutual_information_loss', 'switch_loss', 'ExpertUsage',
    'expert_usage_modules', 'stack_expert_usage', 'reset_expert_usage',
    'all_reduce_expert_usage', 'usage_share', 'usage_entropy', 'num_experts_used',
    'experts_to_cover', 'ExpertSelection', 'ExpertRows', 'expert_stacks',
    'train_experts', 'trainable_experts', 'AdapterConfig', 'VMTAdapter',
    'adapter_modules'
]
