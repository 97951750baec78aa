"""A local file backend whose writes are atomic: a file is either whole or absent."""
import os
import os.path as osp
from pathlib import Path
from typing import Union

import mmengine
from mmengine.fileio import LocalBackend, register_backend


@register_backend('mod_squad_atomic_local')
class AtomicLocalBackend(LocalBackend):
    """mmengine's :class:`~mmengine.fileio.LocalBackend`, but ``put`` and ``put_text``
    write to ``<file>.part`` in the same directory, flush it to disk and rename it
    onto ``<file>`` (:func:`os.replace`, atomic on POSIX and Windows). A process
    killed while writing leaves the previous ``<file>`` (if any) intact and at most a
    stale ``.part`` file, which the next write overwrites.

    Select it with ``backend_args=dict(backend='mod_squad_atomic_local')``;
    :class:`~mod_squad.engine.SafeCheckpointHook` does so for local work dirs.
    """

    def put(self, obj: bytes, filepath: Union[str, Path]) -> None:
        self._write_atomic(filepath, 'wb', obj)

    def put_text(self,
                 obj: str,
                 filepath: Union[str, Path],
                 encoding: str = 'utf-8') -> None:
        self._write_atomic(filepath, 'w', obj, encoding=encoding)

    @staticmethod
    def _write_atomic(filepath, mode: str, obj, **open_args) -> None:
        filepath = os.fspath(filepath)
        mmengine.mkdir_or_exist(osp.dirname(filepath) or '.')
        part = f'{filepath}.part'
        with open(part, mode, **open_args) as f:
            f.write(obj)
            f.flush()
            os.fsync(f.fileno())
        os.replace(part, filepath)
