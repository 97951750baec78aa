"""Safe loading of checkpoints, mmengine's training state included.

mmengine 0.10.7 loads local files with a plain ``torch.load``, which since torch 2.6
means ``weights_only=True``: safe, but it refuses mmengine's own training state
(``Unsupported global: ...HistoryBuffer``), so ``--resume`` fails. This module replaces
mmengine's local scheme (every ``load_from``, ``resume``, ``init_cfg`` Pretrained and
``load_checkpoint`` of a local path) by one that keeps ``weights_only=True`` and allows,
for the duration of its own ``torch.load`` only, the plain-data globals that training
state pickles (:data:`TRAINING_STATE_GLOBALS`). A checkpoint that needs anything else
is refused, unless the user trusts it through the ``MOD_SQUAD_TRUST_CHECKPOINTS``
environment variable (``1``: every file; else a list of files separated by
``os.pathsep``); only then is it fully unpickled, with a warning.

mmengine's URL schemes (``http(s)://``, and ``torchvision://``, ``modelzoo://``,
``open-mmlab://``, ``openmmlab://``, ``mmcls://``, which resolve a model name to a URL)
load with ``torch.hub``'s ``weights_only=False``. They are replaced too: a URL is
downloaded into the same cache as before and that file is loaded as a local one, so a
downloaded checkpoint is trusted only by naming its cached file.
"""
import logging
import os
import os.path as osp
import pickle
import re
import zipfile
from urllib.parse import urlparse

import numpy as np
import torch
from mmengine.dist import get_dist_info
from mmengine.logging import HistoryBuffer, print_log
from mmengine.optim.scheduler import OneCycleParamScheduler
from mmengine.runner.checkpoint import (CheckpointLoader, _get_mmengine_home,
                                        _process_mmcls_checkpoint,
                                        get_deprecated_model_names,
                                        get_external_models, get_mmcls_models,
                                        get_torchvision_models)

TRUST_ENV = 'MOD_SQUAD_TRUST_CHECKPOINTS'

# Functions stored by value in training state; pickle writes a method as
# ``getattr(Class, 'name')``.
PICKLED_METHODS = {
    # HistoryBuffer.__getstate__ saves its statistics methods (the message hub).
    HistoryBuffer: frozenset({'min', 'max', 'current', 'mean'}),
    # OneCycleParamScheduler.state_dict() holds its ``anneal_func``.
    OneCycleParamScheduler: frozenset({'_annealing_cos', '_annealing_linear'}),
}


def pickled_method(owner, name: str):
    """Stands in for ``builtins.getattr`` while unpickling: returns only the methods
    of :data:`PICKLED_METHODS`, so a checkpoint cannot reach anything else."""
    if isinstance(owner, type) and name in PICKLED_METHODS.get(owner, ()):
        return getattr(owner, name)
    owner_name = getattr(owner, '__qualname__', type(owner).__qualname__)
    owner_module = getattr(owner, '__module__', type(owner).__module__)
    raise pickle.UnpicklingError(
        f'Unsupported global: GLOBAL {owner_module}.{owner_name}.{name} (pickled as '
        'getattr) is not a method that training state stores.')


def _numpy_spellings(function) -> list:
    """``function`` under its numpy >= 2 (``numpy._core``) and numpy 1
    (``numpy.core``) module names, so checkpoints written by either load."""
    return [(function, f'{module}.multiarray.{function.__name__}')
            for module in ('numpy._core', 'numpy.core')]


# The reconstructors numpy's own pickles call: of arrays and of scalars.
_ndarray_reconstruct = np.zeros(0).__reduce__()[0]
_scalar_reconstruct = np.float64(0).__reduce__()[0]
# The dtype classes (``numpy.dtypes.Float64DType``, ...) of booleans and numbers.
_number_dtypes = {
    type(np.dtype(code))
    for code in '?' + np.typecodes['AllInteger'] + np.typecodes['AllFloat']
}

#: Globals allowed while loading (all plain data; see the README for each one).
TRAINING_STATE_GLOBALS = [
    HistoryBuffer,  # message hub scalars; __setstate__ only sets attributes
    OneCycleParamScheduler,  # only as the owner of its pickled anneal_func
    (pickled_method, 'builtins.getattr'),
    np.ndarray,
    np.dtype,
    *_number_dtypes,
    *_numpy_spellings(_ndarray_reconstruct),
    *_numpy_spellings(_scalar_reconstruct),
]


class UntrustedCheckpointError(pickle.UnpicklingError):
    """A checkpoint needs a full unpickle (which can run code) and is not trusted."""


class NotACheckpointError(ValueError):
    """A file is empty, truncated or not written by ``torch.save``."""


def _is_trusted(filename: str) -> bool:
    value = os.environ.get(TRUST_ENV, '')
    if value in ('', '0'):
        return False
    if value == '1':
        return True
    trusted = {osp.realpath(osp.expanduser(path)) for path in value.split(os.pathsep)}
    return osp.realpath(filename) in trusted


def _format_problem(filename: str):
    """Why ``filename`` cannot be a ``torch.save`` file, or None if it may be one."""
    with open(filename, 'rb') as file:
        head = file.read(4)
    if not head:
        return 'it is empty (0 bytes)'
    if head == b'PK\x03\x04':  # torch.save's zip archive
        if zipfile.is_zipfile(filename):
            return None
        return ('it is an incomplete zip archive (truncated or corrupted, e.g. by a '
                'process killed while writing it)')
    if head[0] == pickle.PROTO[0]:  # torch's legacy format: pickles
        return None
    return ('it is neither a zip archive nor a pickle, the formats torch.save writes '
            f'(it starts with {head!r})')


def _refusal_reason(error: pickle.UnpicklingError) -> str:
    """The offending global of a ``weights_only`` refusal, else torch's reason."""
    message = str(error)
    name = re.search(r'GLOBAL (\S+)', message)
    if name:
        return f'it refers to `{name.group(1)}`, which is not plain data'
    reason = re.search(r'WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|$)', message, re.S)
    detail = reason.group(1) if reason else message
    return f'torch.load(weights_only=True) refused it ({detail})'


def _allowed_globals():
    """A context that allows :data:`TRAINING_STATE_GLOBALS`; on exit it removes only
    those it added, so the caller's own ``add_safe_globals`` survive."""
    already = set(torch.serialization.get_safe_globals())
    return torch.serialization.safe_globals(
        [item for item in TRAINING_STATE_GLOBALS if item not in already])


@CheckpointLoader.register_scheme(prefixes='', force=True)
def load_from_local(filename, map_location=None):
    """Load a local checkpoint with ``weights_only=True`` plus the training-state
    globals; fully unpickle it only if ``MOD_SQUAD_TRUST_CHECKPOINTS`` trusts it.

    Args:
        filename (str): Local checkpoint path (``~`` is expanded).
        map_location (str, optional): Same as :func:`torch.load`.

    Returns:
        dict: The loaded checkpoint.

    Raises:
        UntrustedCheckpointError: it needs a global outside the allow-list.
        NotACheckpointError: it is empty, truncated or not a PyTorch file.
    """
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    return _load_file(filename, map_location)


def _load_file(filename, map_location, url=None):
    """:func:`load_from_local` of an existing file; ``url``: where it was downloaded
    from, named in the errors."""
    name = filename if url is None else f'{url} (downloaded to {filename})'
    try:
        with _allowed_globals():
            return torch.load(filename, map_location=map_location, weights_only=True)
    except Exception as error:
        problem = _format_problem(filename)
        if problem:
            fix = ('Check the path, or save the checkpoint again.' if url is None else
                   f'Check the URL, and delete {filename} to download it again.')
            raise NotACheckpointError(
                f'{name} is not a PyTorch checkpoint: {problem}. {fix}') from error
        if not isinstance(error, pickle.UnpicklingError):
            raise
        reason = _refusal_reason(error)
    if not _is_trusted(filename):
        raise UntrustedCheckpointError(
            f'{name} was not loaded: {reason}, and loading it would need a full '
            'unpickle, which can run arbitrary code. If you trust this file, set '
            f'{TRUST_ENV}={filename} (several files separated by {os.pathsep!r}, or 1 '
            'for every checkpoint) and load it again; see "Loading checkpoints safely" '
            'in the README.')
    print_log(
        f'{name}: fully unpickled, as {TRUST_ENV} trusts it ({reason}).',
        logger='current', level=logging.WARNING)
    return torch.load(filename, map_location=map_location, weights_only=False)


def _download(url: str, model_dir=None, progress: bool = True) -> str:
    """The cached copy of ``url`` (named by the URL's file name, in ``model_dir``,
    default ``<torch.hub.get_dir()>/checkpoints``: the cache of ``torch.hub`` and
    mmengine), downloaded first if it is not there."""
    if model_dir is None:
        model_dir = osp.join(torch.hub.get_dir(), 'checkpoints')
    os.makedirs(model_dir, exist_ok=True)
    cached_file = osp.join(model_dir, osp.basename(urlparse(url).path))
    if not osp.exists(cached_file):
        print_log(f'Downloading {url} to {cached_file}', logger='current')
        torch.hub.download_url_to_file(url, cached_file, progress=progress)
    return cached_file


@CheckpointLoader.register_scheme(prefixes=('http://', 'https://'), force=True)
def load_from_http(filename, map_location=None, model_dir=None,
                   progress=os.isatty(0)):
    """Download a checkpoint (unless cached) and load the file as
    :func:`load_from_local` does: the allow-list, the trust and the errors apply, and
    trusting it means naming the cached file. In a distributed run rank 0 downloads
    first, then the other ranks (who find it cached if the cache is shared).

    Args:
        filename (str): ``http://`` or ``https://`` URL of the checkpoint.
        map_location (str, optional): Same as :func:`torch.load`.
        model_dir (str, optional): Cache directory. Defaults to
            ``<torch.hub.get_dir()>/checkpoints``, as mmengine's loader.
        progress (bool): Show a progress bar. Defaults to whether stdin is a
            terminal, as mmengine's loader.

    Returns:
        dict: The loaded checkpoint.
    """
    rank, world_size = get_dist_info()
    if rank > 0:
        torch.distributed.barrier()
    try:
        cached_file = _download(filename, model_dir, progress)
    finally:
        # Also when it failed: the other ranks then try (and fail) instead of hanging.
        if rank == 0 and world_size > 1:
            torch.distributed.barrier()
    return _load_file(cached_file, map_location, url=filename)


def _model_name(filename: str) -> str:
    """``'torchvision://resnet50'`` -> ``'resnet50'``."""
    return filename.split('://', 1)[1]


@CheckpointLoader.register_scheme(
    prefixes=('modelzoo://', 'torchvision://'), force=True)
def load_from_torchvision(filename, map_location=None):
    """Load torchvision's weights of a model name (mmengine's table of URLs) through
    :func:`load_from_http`."""
    if filename.startswith('modelzoo://'):
        print_log('The URL scheme of "modelzoo://" is deprecated, please use '
                  '"torchvision://" instead', logger='current', level=logging.WARNING)
    url = get_torchvision_models()[_model_name(filename)]
    return load_from_http(url, map_location=map_location)


@CheckpointLoader.register_scheme(
    prefixes=('open-mmlab://', 'openmmlab://'), force=True)
def load_from_openmmlab(filename, map_location=None):
    """Load an OpenMMLab model name (mmengine's table, plus
    ``$MMENGINE_HOME/open_mmlab.json``) through :func:`load_from_http`, or through
    :func:`load_from_local` where the table gives a path under ``MMENGINE_HOME``."""
    prefix, name = filename.split('://', 1)
    new_name = get_deprecated_model_names().get(name)
    if new_name is not None:
        print_log(f'{prefix}://{name} is deprecated in favor of {prefix}://{new_name}',
                  logger='current', level=logging.WARNING)
        name = new_name
    location = get_external_models()[name]
    if location.startswith(('http://', 'https://')):
        return load_from_http(location, map_location=map_location)
    return load_from_local(osp.join(_get_mmengine_home(), location), map_location)


@CheckpointLoader.register_scheme(prefixes='mmcls://', force=True)
def load_from_mmcls(filename, map_location=None):
    """Load an mmcls model name (mmengine's table) through :func:`load_from_http`;
    keep its backbone's weights, as mmengine does."""
    url = get_mmcls_models()[_model_name(filename)]
    return _process_mmcls_checkpoint(load_from_http(url, map_location=map_location))
