"""Analysis of trained models: active FLOPs and parameters, expert usage.

Depends on :mod:`mod_squad.moe`, :mod:`mod_squad.models` and
:mod:`mod_squad.datasets` (the tasks' dataloaders); the tools under
``tools/analysis_tools/`` are thin command lines over it.
"""
from .builder import build_model  # noqa: F401
from .complexity import (Complexity, ParamCount, analyze_complexity,  # noqa: F401
                         count_parameters, moe_flop_analyzer)
from .expert_usage import (LayerUsage, UsageReport, collect_usage,  # noqa: F401
                           format_summary, plot_usage, summarize)
from .extraction import (ExtractedModel, extract_task_model,  # noqa: F401
                         select_experts, task_usage)
