"""Iteration-based training loop that resumes a task batch sampler by seeking."""
import logging

from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.runner import IterBasedTrainLoop
from mmengine.runner.loops import _InfiniteDataloaderIterator

from mod_squad.registry import LOOPS
from .random_state_hook import RandomStateHook
from .task_sampler_state_hook import TaskSamplerStateHook


@LOOPS.register_module()
class TaskIterBasedTrainLoop(IterBasedTrainLoop):
    """``IterBasedTrainLoop`` that resumes a
    :class:`~mod_squad.datasets.TaskBatchSampler` without loading the trained batches.

    mmengine resumes at iteration ``n`` by loading and dropping ``n`` batches. When the
    dataloader's batch sampler has ``set_iter``, this loop moves it to ``n`` instead
    (replaying only the task draws) and restarts the dataloader iterator, whose workers
    prefetched from iteration 0 when the loop was built, before calling the
    ``before_train_epoch`` hooks, so that they see the data of iteration ``n``
    (:class:`RandomStateHook` restores the random states there: restarting the
    iterator draws from torch's generator). It registers a
    :class:`TaskSamplerStateHook` and a :class:`RandomStateHook` unless the runner has
    them, so that checkpoints carry the sampler's seed and the random states.
    Arguments are those of ``IterBasedTrainLoop``.
    """

    def __init__(self, runner, *args, **kwargs):
        super().__init__(runner, *args, **kwargs)
        self._check_tasks_have_branches()
        for hook_type in (TaskSamplerStateHook, RandomStateHook):
            if not any(isinstance(hook, hook_type) for hook in runner.hooks):
                runner.register_hook(hook_type())

    def _check_tasks_have_branches(self) -> None:
        """Every task of the data needs a branch of the model, and vice versa."""
        model = self.runner.model
        model = model.module if is_model_wrapper(model) else model
        data_tasks = getattr(self.dataloader.dataset, 'task_names', None)
        branches = getattr(model, 'task_names', None)
        if data_tasks is None or branches is None:
            return
        no_branch = sorted(set(data_tasks) - set(branches))
        if no_branch:
            raise ValueError(f'Tasks {no_branch} of the training data have no branch in '
                             f'the model, whose branches are {list(branches)}.')
        # frozen branches (the old tasks of continual learning) need no data
        modules = getattr(model, 'branches', {})
        no_data = sorted(t for t in set(branches) - set(data_tasks) if t not in modules
                         or any(p.requires_grad for p in modules[t].parameters()))
        if no_data:
            raise ValueError(f'Branches {no_data} of the model have no training dataset; '
                             f'the training data has tasks {list(data_tasks)}.')

    def _skip_trained_iters(self) -> None:
        """Position the data at ``self._iter`` and log how."""
        batch_sampler = self.dataloader.batch_sampler
        if hasattr(batch_sampler, 'set_iter'):
            batch_sampler.set_iter(self._iter)
            self.dataloader_iterator = _InfiniteDataloaderIterator(self.dataloader)
            print_log(
                f'Moved {type(batch_sampler).__name__} to iteration {self._iter} '
                'without loading the trained batches',
                logger='current')
            return
        print_log(
            f'Advance dataloader {self._iter} steps to skip data that has '
            f'already been trained ({type(batch_sampler).__name__} has no '
            '`set_iter`)',
            logger='current',
            level=logging.WARNING)
        for _ in range(self._iter):
            next(self.dataloader_iterator)

    def run(self):
        """``IterBasedTrainLoop.run`` with :meth:`_skip_trained_iters` on resume,
        before the ``before_train_epoch`` hooks."""
        self.runner.call_hook('before_train')
        if self._iter > 0:
            self._skip_trained_iters()
        self.runner.call_hook('before_train_epoch')
        while self._iter < self._max_iters and not self.stop_training:
            self.runner.model.train()
            self.run_iter(next(self.dataloader_iterator))
            self._decide_current_val_interval()
            if (self.runner.val_loop is not None and self._iter >= self.val_begin and
                (self._iter % self.val_interval == 0 or self._iter == self._max_iters)):
                self.runner.val_loop.run()
        self.runner.call_hook('after_train_epoch')
        self.runner.call_hook('after_train')
        return self.runner.model
