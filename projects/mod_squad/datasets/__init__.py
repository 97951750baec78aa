from .heterogeneous_dataset import HeterogeneousDataset
from .task_batch_sampler import DEFAULT_RATIOS, TaskBatchSampler

__all__ = ['HeterogeneousDataset', 'TaskBatchSampler', 'DEFAULT_RATIOS']
