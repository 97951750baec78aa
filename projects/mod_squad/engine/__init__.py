from .checkpoint_loader import load_from_local
from .expert_usage_hook import ExpertUsageHook
from .moe_aux_loss_hook import MoEAuxLossHook
from .moe_aux_loss_schedule_hook import MoEAuxLossScheduleHook
from .multi_task_loops import (MultiTaskEvalLoop, MultiTaskTestLoop,
                               MultiTaskValLoop, restrict_tasks)
from .multi_task_visualization_hook import MultiTaskVisualizationHook
from .task_sampler_state_hook import TaskSamplerStateHook
from .task_train_loop import TaskIterBasedTrainLoop

__all__ = [
    'load_from_local', 'ExpertUsageHook', 'MoEAuxLossHook', 'MoEAuxLossScheduleHook',
    'MultiTaskEvalLoop', 'MultiTaskValLoop', 'MultiTaskTestLoop', 'restrict_tasks',
    'MultiTaskVisualizationHook',
    'TaskSamplerStateHook', 'TaskIterBasedTrainLoop'
]
