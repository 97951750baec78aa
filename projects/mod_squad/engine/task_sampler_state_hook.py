"""Keep the task batch sampler's state in checkpoints."""
import logging

from mmengine.hooks import Hook
from mmengine.logging import print_log

from mod_squad.registry import HOOKS


@HOOKS.register_module()
class TaskSamplerStateHook(Hook):
    """Save the train batch sampler's ``state_dict()`` in checkpoints (key
    ``'task_sampler'``) and restore it when training resumes.

    The saved ``iteration`` is the checkpoint's ``meta['iter']``, the iteration
    training continues at (the sampler itself runs ahead by the prefetched batches).
    On resume the sampler adopts the saved seed, so the task sequence continues even
    when the config sets no seed, and warns when the config changed its ratios or
    batch sizes. A checkpoint only loaded for its weights (``load_from``) starts a
    new sequence. :class:`~mod_squad.engine.TaskIterBasedTrainLoop` registers this
    hook itself; add it to ``custom_hooks`` for ``EpochBasedTrainLoop``.
    """

    key = 'task_sampler'

    def __init__(self):
        self._loaded = None

    @staticmethod
    def _batch_sampler(runner):
        batch_sampler = runner.train_dataloader.batch_sampler
        return batch_sampler if hasattr(batch_sampler, 'state_dict') else None

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        batch_sampler = self._batch_sampler(runner)
        if batch_sampler is not None:
            checkpoint[self.key] = dict(batch_sampler.state_dict(),
                                        iteration=checkpoint['meta']['iter'])

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        # ``resume`` sets the loop's iteration after this; apply in ``before_train``.
        self._loaded = checkpoint.get(self.key)

    def before_train(self, runner) -> None:
        batch_sampler = self._batch_sampler(runner)
        if batch_sampler is None or runner.iter == 0:  # new run or ``load_from``
            return
        if self._loaded is None:
            print_log(
                'TaskSamplerStateHook: the checkpoint holds no task sampler state; '
                f'continuing with seed {batch_sampler.seed}, which repeats the saved '
                'task sequence only if the config fixes the seed',
                logger='current',
                level=logging.WARNING)
        else:
            batch_sampler.load_state_dict(self._loaded)
        self._loaded = None
