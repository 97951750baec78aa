from .atomic_local_backend import AtomicLocalBackend
from .checkpoint_loader import load_from_local
from .expert_usage_hook import ExpertUsageHook
from .layer_decay_optim_wrapper_constructor import LayerDecayOptimWrapperConstructor
from .moe_aux_loss_hook import MoEAuxLossHook
from .moe_aux_loss_schedule_hook import MoEAuxLossScheduleHook
from .multi_task_loops import (MultiTaskEvalLoop, MultiTaskTestLoop,
                               MultiTaskValLoop, restrict_tasks)
from .multi_task_visualization_hook import MultiTaskVisualizationHook
from .random_state_hook import RandomStateHook
from .resumable_checkpoint import find_resumable_checkpoint
from .safe_checkpoint_hook import SafeCheckpointHook
from .task_sampler_state_hook import TaskSamplerStateHook
from .task_train_loop import TaskIterBasedTrainLoop
from .trainable_params_hook import TrainableParamsHook

__all__ = [
    'load_from_local', 'ExpertUsageHook', 'LayerDecayOptimWrapperConstructor',
    'MoEAuxLossHook', 'MoEAuxLossScheduleHook',
    'MultiTaskEvalLoop', 'MultiTaskValLoop', 'MultiTaskTestLoop', 'restrict_tasks',
    'MultiTaskVisualizationHook', 'AtomicLocalBackend', 'RandomStateHook',
    'SafeCheckpointHook', 'find_resumable_checkpoint',
    'TaskSamplerStateHook', 'TaskIterBasedTrainLoop', 'TrainableParamsHook'
]
