from .heterogeneous_dataset import HeterogeneousDataset
from .seeded_index import SeededIndex
from .task_batch_sampler import TaskBatchSampler

__all__ = ['HeterogeneousDataset', 'SeededIndex', 'TaskBatchSampler']
