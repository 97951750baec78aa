"""A CheckpointHook after whose every step a resumable checkpoint exists."""
import os.path as osp
from typing import Optional

from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend, get_file_backend
from mmengine.hooks import CheckpointHook

from mod_squad.registry import HOOKS
from .atomic_local_backend import AtomicLocalBackend


@HOOKS.register_module()
class SafeCheckpointHook(CheckpointHook):
    """mmengine's :class:`~mmengine.hooks.CheckpointHook` (same arguments) that a
    kill at any moment leaves with a complete checkpoint to resume from.

    mmengine's hook deletes the checkpoint beyond ``max_keep_ckpts`` *before* writing
    the new one, and writes the checkpoint and ``last_checkpoint`` in place: with
    ``max_keep_ckpts=1`` a kill while writing leaves only a partial file. This hook

    - writes checkpoints (regular and best) and ``last_checkpoint`` atomically
      through :class:`~mod_squad.engine.AtomicLocalBackend` when they go to a local
      directory and no ``backend_args`` are given (other backends write as before);
    - points ``last_checkpoint`` at the new checkpoint once it is complete;
    - only then deletes the checkpoint that fell out of ``max_keep_ckpts``.

    The best checkpoint (``save_best``) is still replaced as mmengine does: the old
    one is deleted before the new one is written.
    """

    def before_train(self, runner) -> None:
        super().before_train(runner)
        if (self.backend_args is None and self.file_client_args is None
                and type(self.file_backend) is LocalBackend):
            self.backend_args = dict(backend='mod_squad_atomic_local')
            self.file_backend = get_file_backend(
                self.out_dir, backend_args=self.backend_args)

    def _save_checkpoint_with_step(self, runner, step, meta) -> None:
        expired = self._keep(runner, step)
        filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        runner.save_checkpoint(
            self.out_dir,
            filename,
            self.file_client_args,
            save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler,
            meta=meta,
            by_epoch=self.by_epoch,
            backend_args=self.backend_args,
            **self.args)
        if not is_main_process():
            return
        AtomicLocalBackend().put_text(self.last_ckpt,
                                      osp.join(runner.work_dir, 'last_checkpoint'))
        if expired is not None:
            self._remove(self.filename_tmpl.format(expired))

    def _keep(self, runner, step) -> Optional[int]:
        """Add ``step`` to the kept checkpoints; return the step that drops out."""
        if self.max_keep_ckpts <= 0 or (self.keep_ckpt_ids
                                        and self.keep_ckpt_ids[-1] == step):
            return None  # ``_save_best_checkpoint`` saves the same step again
        expired = (self.keep_ckpt_ids.popleft()
                   if len(self.keep_ckpt_ids) == self.max_keep_ckpts else None)
        self.keep_ckpt_ids.append(step)
        runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))
        return expired

    def _remove(self, filename: str) -> None:
        path = self.file_backend.join_path(self.out_dir, filename)
        if self.file_backend.isfile(path):
            self.file_backend.remove(path)
        elif self.file_backend.isdir(path):  # DeepSpeed saves directories
            self.file_backend.rmtree(path)
