from .heterogeneous_dataset import HeterogeneousDataset, with_checked_dataset
from .seeded_index import SeededIndex
from .task_batch_sampler import TaskBatchSampler

__all__ = [
    'HeterogeneousDataset', 'SeededIndex', 'TaskBatchSampler', 'with_checked_dataset'
]
