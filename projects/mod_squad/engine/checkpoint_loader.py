"""Loading mmengine checkpoints under torch >= 2.6.

torch 2.6 made ``torch.load(weights_only=True)`` the default, and mmengine 0.10.7 loads
local checkpoints with a plain ``torch.load``: resuming then fails on the pickled
training state (``Unsupported global: mmengine.logging.history_buffer.HistoryBuffer``,
numpy scalars in the message hub, ...). This module replaces mmengine's local-file
scheme with one that loads full checkpoints, as mmengine did before torch 2.6. Only load
checkpoints you trust: unpickling can run code.
"""
import os.path as osp

import torch
from mmengine.runner.checkpoint import CheckpointLoader


@CheckpointLoader.register_scheme(prefixes='', force=True)
def load_from_local(filename, map_location=None):
    """Load a local checkpoint with its full pickled state.

    Args:
        filename (str): Local checkpoint path (``~`` is expanded).
        map_location (str, optional): Same as :func:`torch.load`.

    Returns:
        dict: The loaded checkpoint.
    """
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    return torch.load(filename, map_location=map_location, weights_only=False)
