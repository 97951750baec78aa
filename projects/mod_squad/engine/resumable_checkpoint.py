"""Find the checkpoint that ``--resume`` (without a path) continues from."""
import logging
import os
import os.path as osp
import re
import zipfile
from typing import Optional

from mmengine.logging import print_log

# The names mmengine's CheckpointHook gives the checkpoints it can resume from (best
# checkpoints are saved without the optimiser state).
_RESUMABLE_NAME = re.compile(r'(?:iter|epoch)_(\d+)\.pth')


def checkpoint_problem(path: str) -> Optional[str]:
    """Why the file at ``path`` is not a complete checkpoint, or ``None`` if it is.

    Checks the zip archive that ``torch.save`` writes: a file cut short by a kill
    has no central directory at its end. Nothing is unpickled.
    """
    if not path:
        return 'it is empty'
    if not osp.isfile(path):
        return f'{path} does not exist'
    try:
        with zipfile.ZipFile(path) as archive:
            if any(name.endswith('/data.pkl') for name in archive.namelist()):
                return None
    except (zipfile.BadZipFile, OSError):
        pass
    return f'{path} is not a complete torch checkpoint (partly written?)'


def find_resumable_checkpoint(work_dir: str) -> Optional[str]:
    """The checkpoint to resume the run in ``work_dir`` from.

    That is the one named by ``work_dir/last_checkpoint`` (written by mmengine's
    ``CheckpointHook``) when it is complete. When that file is empty or names a
    missing or partly written file, the newest complete ``iter_<n>.pth`` /
    ``epoch_<n>.pth`` in ``work_dir``, with a warning naming both. ``None`` (a new
    run, as in mmengine) when there is no ``last_checkpoint``, or no usable
    checkpoint (with a warning).
    """
    record = osp.join(work_dir, 'last_checkpoint')
    if not osp.exists(record):
        print_log(f'No {record}: training starts from the beginning.', logger='current')
        return None
    with open(record) as f:
        named = f.read().strip()
    problem = checkpoint_problem(named)
    if problem is None:
        return named
    candidates = sorted(
        (int(match.group(1)), osp.join(work_dir, name)) for name in os.listdir(work_dir)
        if (match := _RESUMABLE_NAME.fullmatch(name)))
    found = next((path for _, path in reversed(candidates)
                  if checkpoint_problem(path) is None), None)
    if found:
        outcome = f'resuming from {found}, the newest complete checkpoint there'
    else:
        outcome = ('no complete iter_<n>.pth / epoch_<n>.pth is there either: '
                   'training starts from the beginning')
    print_log(
        f'{record} names no usable checkpoint ({problem}); {outcome}.',
        logger='current',
        level=logging.WARNING)
    return found
