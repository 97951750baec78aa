"""Local checkpoints load with ``weights_only=True`` plus the globals of mmengine's
training state; a checkpoint that needs a full unpickle is refused (no code runs) on
every loading path unless ``MOD_SQUAD_TRUST_CHECKPOINTS`` trusts it; files that are
not checkpoints get an error naming them. Checkpoints given by URL (and mmengine's
``torchvision://``, ``open-mmlab://``, ``mmcls://`` names) are downloaded from a local
server and then loaded the same way."""
import copy
import functools
import http.server
import json
import logging
import os
import pathlib
import pickle
import re
import threading

import numpy as np
import pytest
import torch
import torch.nn as nn
from mmengine.dataset import DefaultSampler
from mmengine.logging import HistoryBuffer, MMLogger
from mmengine.model import BaseModel
from mmengine.optim.scheduler import OneCycleLR, OneCycleParamScheduler
from mmengine.runner import Runner, load_checkpoint
from mmengine.runner.checkpoint import CheckpointLoader

from mod_squad.engine import checkpoint_loader
from mod_squad.engine.checkpoint_loader import (TRUST_ENV, NotACheckpointError,
                                                UntrustedCheckpointError,
                                                load_from_local)


class RegressionModel(BaseModel):

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 1)

    def forward(self, inputs, targets, mode='loss'):
        inputs = torch.stack(inputs)
        targets = torch.stack(targets)
        return dict(loss=((self.linear(inputs) - targets)**2).mean())


class RegressionDataset(torch.utils.data.Dataset):

    def __init__(self, size=64):
        generator = torch.Generator().manual_seed(0)
        self.inputs = torch.randn(size, 4, generator=generator)
        self.targets = self.inputs.sum(1, keepdim=True)

    def __len__(self):
        return len(self.inputs)

    def __getitem__(self, index):
        return dict(inputs=self.inputs[index], targets=self.targets[index])


def make_runner(work_dir, max_iters, resume=False, load_from=None):
    return Runner(
        model=RegressionModel(),
        work_dir=str(work_dir),
        train_dataloader=dict(
            dataset=RegressionDataset(),
            sampler=dict(type=DefaultSampler, shuffle=True),
            batch_size=8,
            num_workers=0),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        optim_wrapper=dict(optimizer=dict(type='AdamW', lr=0.05)),
        default_hooks=dict(
            checkpoint=dict(type='CheckpointHook', interval=4, by_epoch=False),
            logger=dict(type='LoggerHook', interval=1)),
        randomness=dict(seed=0),
        resume=resume,
        load_from=None if load_from is None else str(load_from),
        default_scope='mmengine',
        experiment_name=f'resume_{max_iters}_{resume}_{os.path.basename(work_dir)}')


@pytest.fixture(autouse=True)
def untrusted(monkeypatch):
    """No trust from the environment the tests run in."""
    monkeypatch.delenv(TRUST_ENV, raising=False)


class TouchFile:
    """Unpickling this creates ``path``: the payload of a malicious checkpoint."""

    def __init__(self, path):
        self.path = pathlib.Path(path)

    def __reduce__(self):
        return pathlib.Path.touch, (self.path, )


@pytest.fixture
def crafted(tmp_path):
    """(a checkpoint that creates ``marker`` when unpickled, marker)."""
    marker = tmp_path / 'created_by_unpickling'
    path = tmp_path / 'crafted.pth'
    torch.save(dict(state_dict=RegressionModel().state_dict(), meta=TouchFile(marker)),
               path)
    return path, marker


@pytest.fixture
def trained(tmp_path):
    """A checkpoint of a real 4-iteration run (AdamW, message hub, ...)."""
    make_runner(tmp_path / 'trained', max_iters=4).train()
    return tmp_path / 'trained' / 'iter_4.pth'


def test_torch_refuses_the_training_state_that_the_loader_loads(trained):
    with pytest.raises(pickle.UnpicklingError, match='Unsupported global'):
        torch.load(trained)
    before = set(torch.serialization.get_safe_globals())
    checkpoint = load_from_local(str(trained))
    assert checkpoint['meta']['iter'] == 4
    loss = checkpoint['message_hub']['log_scalars']['train/loss']
    assert isinstance(loss, HistoryBuffer) and len(loss.data[0]) == 4
    # The allow-list was scoped to the load.
    assert set(torch.serialization.get_safe_globals()) == before


def test_callers_own_safe_globals_survive_a_load(trained):
    with torch.serialization.safe_globals([HistoryBuffer]):
        load_from_local(str(trained))
        assert HistoryBuffer in torch.serialization.get_safe_globals()


def test_resume_continues_iterations_and_optimizer_state(tmp_path):
    reference = make_runner(tmp_path / 'reference', max_iters=8)
    reference.train()

    interrupted = make_runner(tmp_path / 'resumed', max_iters=4)
    interrupted.train()
    saved_state = copy.deepcopy(interrupted.optim_wrapper.state_dict())

    resumed = make_runner(tmp_path / 'resumed', max_iters=8, resume=True)
    resumed._train_loop = resumed.build_train_loop(resumed._train_loop)
    resumed.load_or_resume()
    assert resumed.iter == 4
    state = resumed.optim_wrapper.state_dict()['state']
    for key, value in saved_state['state'][0].items():
        torch.testing.assert_close(state[0][key], value)

    resumed.train()
    assert resumed.iter == 8
    torch.testing.assert_close(
        resumed.model.linear.weight, reference.model.linear.weight)


def test_amp_loss_scaler_and_one_cycle_scheduler_state_load(tmp_path):
    """The rest of mmengine's training state: AmpOptimWrapper's GradScaler state and
    OneCycleLR's ``anneal_func`` (pickled as ``getattr(OneCycleParamScheduler, ...)``)."""
    model = nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler('cpu')
    scaler.scale(model(torch.ones(1, 2)).sum()).backward()
    scaler.step(optimizer)
    scaler.update()
    scheduler = OneCycleLR(optimizer, eta_max=0.1, total_steps=10)
    path = tmp_path / 'state.pth'
    torch.save(
        dict(optimizer=dict(optimizer.state_dict(), loss_scaler=scaler.state_dict()),
             param_schedulers=[scheduler.state_dict()]), path)

    checkpoint = load_from_local(str(path))
    assert checkpoint['optimizer']['loss_scaler'] == scaler.state_dict()
    anneal_func = checkpoint['param_schedulers'][0]['anneal_func']
    assert anneal_func is OneCycleParamScheduler._annealing_cos


def test_numpy_1_checkpoints_load(tmp_path):
    """numpy 1 wrote ``numpy.core.multiarray``, numpy 2 ``numpy._core.multiarray``."""
    path = tmp_path / 'numpy1.pth'
    state = dict(scalar=np.float64(1.5), array=np.arange(3, dtype=np.int64))
    torch.save(state, path, _use_new_zipfile_serialization=False)
    numpy_2, numpy_1 = b'numpy._core.multiarray\n', b'numpy.core.multiarray\n'
    data = path.read_bytes()
    assert data.count(numpy_2) == 2
    path.write_bytes(data.replace(numpy_2, numpy_1))

    checkpoint = load_from_local(str(path))
    assert checkpoint['scalar'] == np.float64(1.5)
    np.testing.assert_array_equal(checkpoint['array'], np.arange(3))


def load_through_load_from(path, tmp_path):
    make_runner(tmp_path / 'load_from', max_iters=4, load_from=path).load_or_resume()


def load_through_resume(path, tmp_path):
    runner = make_runner(tmp_path / 'resume', max_iters=4, resume=True, load_from=path)
    runner._train_loop = runner.build_train_loop(runner._train_loop)
    runner.load_or_resume()


def load_through_load_checkpoint(path, tmp_path):
    """What tools/test.py does (runner.load_checkpoint -> load_checkpoint)."""
    load_checkpoint(RegressionModel(), str(path))


def load_through_mod_squad_vit_init_cfg(path, tmp_path):
    from mod_squad.models import ModSquadViT
    tiny = dict(embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=64)
    ModSquadViT(arch=tiny, img_size=32, init_cfg=dict(
        type='Pretrained', checkpoint=str(path))).init_weights()


def load_through_mmdet_init_cfg(path, tmp_path):
    from mmdet.models import ResNet
    ResNet(depth=18, init_cfg=dict(type='Pretrained',
                                   checkpoint=str(path))).init_weights()


def load_through_mmseg_init_cfg(path, tmp_path):
    from mmseg.models import ResNetV1c
    ResNetV1c(depth=18, init_cfg=dict(type='Pretrained',
                                      checkpoint=str(path))).init_weights()


LOADING_PATHS = [
    load_through_load_from, load_through_resume, load_through_load_checkpoint,
    load_through_mod_squad_vit_init_cfg, load_through_mmdet_init_cfg,
    load_through_mmseg_init_cfg
]


@pytest.mark.parametrize('load', LOADING_PATHS, ids=lambda load: load.__name__[13:])
def test_crafted_checkpoint_is_refused_without_running_code(load, crafted, tmp_path):
    path, marker = crafted
    with pytest.raises(UntrustedCheckpointError) as error:
        load(path, tmp_path)
    assert not marker.exists()
    message = str(error.value)
    assert message.startswith(f'{path} was not loaded: it refers to `pathlib.Path`, '
                              'which is not plain data')
    assert f'set {TRUST_ENV}={path} (several files separated by' in message


@pytest.mark.parametrize('owner, name', [(HistoryBuffer, '__init__'),
                                         (np.ndarray, 'tofile')])
def test_getattr_reaches_only_the_methods_training_state_stores(owner, name, tmp_path):
    """Training state needs ``getattr`` (HistoryBuffer's statistics methods); a
    checkpoint cannot use it to reach anything else."""

    class Reach:

        def __reduce__(self):
            return getattr, (owner, name)

    path = tmp_path / 'getattr.pth'
    torch.save(dict(meta=Reach()), path)
    with pytest.raises(UntrustedCheckpointError,
                       match=f'it refers to `{owner.__module__}.{owner.__qualname__}'
                       f'.{name}`'):
        load_from_local(str(path))


@pytest.mark.parametrize('trust', [
    lambda path: '1',
    lambda path: str(path),
    lambda path: os.pathsep.join([str(path.with_name('other.pth')), str(path)]),
], ids=['every file', 'this file', 'a list with this file'])
def test_trusted_checkpoint_is_fully_unpickled_with_a_warning(
        trust, crafted, monkeypatch, tmp_path):
    path, marker = crafted
    monkeypatch.setenv(TRUST_ENV, trust(path))
    logger = MMLogger.get_instance(f'trust_{tmp_path.name}')  # the current logger
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        checkpoint = CheckpointLoader.load_checkpoint(str(path))
    finally:
        logger.removeHandler(handler)
    assert marker.exists()  # the payload ran: that is what trusting means
    assert set(checkpoint) == {'state_dict', 'meta'}
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert warnings == [f'{path}: fully unpickled, as {TRUST_ENV} trusts it (it refers '
                        'to `pathlib.Path`, which is not plain data).']


@pytest.mark.parametrize('trust', [
    lambda path: '0',
    lambda path: '',
    lambda path: str(path.with_name('other.pth')),
], ids=['0', 'empty', 'another file'])
def test_trust_of_other_files_does_not_apply(trust, crafted, monkeypatch):
    path, marker = crafted
    monkeypatch.setenv(TRUST_ENV, trust(path))
    with pytest.raises(UntrustedCheckpointError, match='was not loaded'):
        load_from_local(str(path))
    assert not marker.exists()


def truncated(trained):
    return trained.read_bytes()[:trained.stat().st_size // 2]


@pytest.mark.parametrize('content, problem', [
    (lambda trained: b'', 'it is empty (0 bytes)'),
    (lambda trained: b'\x13' + np.random.default_rng(0).bytes(999),
     'it is neither a zip archive nor a pickle, the formats torch.save writes '
     r"(it starts with b'\x13"),
    (truncated, 'it is an incomplete zip archive (truncated or corrupted'),
], ids=['empty', 'random', 'truncated'])
def test_a_file_that_is_not_a_checkpoint_is_named(content, problem, trained, tmp_path):
    path = tmp_path / 'broken.pth'
    path.write_bytes(content(trained))
    with pytest.raises(NotACheckpointError) as error:
        CheckpointLoader.load_checkpoint(str(path))
    assert str(error.value).startswith(
        f'{path} is not a PyTorch checkpoint: {problem}')


# --- checkpoints given by URL -----------------------------------------------------


class QuietHandler(http.server.SimpleHTTPRequestHandler):

    def log_message(self, *args):
        pass


@pytest.fixture
def served(tmp_path, monkeypatch):
    """(a folder served at ``http://127.0.0.1:PORT``, that base URL), with the
    download cache (``$TORCH_HOME/hub/checkpoints``) and ``MMENGINE_HOME`` in
    ``tmp_path``."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    monkeypatch.setenv('MMENGINE_HOME', str(tmp_path / 'mmengine'))
    monkeypatch.setenv('no_proxy', '127.0.0.1')
    folder = tmp_path / 'served'
    folder.mkdir()
    server = http.server.ThreadingHTTPServer(
        ('127.0.0.1', 0), functools.partial(QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, args=(0.01, ), daemon=True)
    thread.start()
    yield folder, f'http://127.0.0.1:{server.server_address[1]}'
    server.shutdown()
    server.server_close()
    thread.join()


def hub_cache_file(tmp_path, name):
    return tmp_path / 'torch' / 'hub' / 'checkpoints' / name


def url_of_http(url, tmp_path, monkeypatch):
    return url


def url_of_open_mmlab(url, tmp_path, monkeypatch):
    """A model name of ``$MMENGINE_HOME/open_mmlab.json`` (mmengine's user table)."""
    (tmp_path / 'mmengine').mkdir(exist_ok=True)
    (tmp_path / 'mmengine' / 'open_mmlab.json').write_text(
        json.dumps({'mod_squad/served': url}))
    return 'open-mmlab://mod_squad/served'


def url_of_torchvision(url, tmp_path, monkeypatch):
    """A model name of torchvision's table (it lists pytorch.org URLs only)."""
    monkeypatch.setattr(checkpoint_loader, 'get_torchvision_models',
                        lambda: dict(served=url))
    return 'torchvision://served'


def url_of_mmcls(url, tmp_path, monkeypatch):
    """A model name of mmengine's mmcls table (download.openmmlab.com URLs only)."""
    monkeypatch.setattr(checkpoint_loader, 'get_mmcls_models', lambda: dict(served=url))
    return 'mmcls://served'


URL_SCHEMES = [url_of_http, url_of_open_mmlab, url_of_torchvision, url_of_mmcls]


@pytest.mark.parametrize('scheme', URL_SCHEMES, ids=lambda scheme: scheme.__name__[7:])
def test_url_checkpoint_is_downloaded_once_and_loaded_safely(
        scheme, served, tmp_path, monkeypatch):
    folder, base = served
    state = dict(state_dict={'backbone.weight': torch.arange(3.)}, meta=dict(iter=7))
    torch.save(state, folder / 'good.pth')
    filename = scheme(f'{base}/good.pth', tmp_path, monkeypatch)

    checkpoint = CheckpointLoader.load_checkpoint(filename)
    (folder / 'good.pth').unlink()  # the second load reads the cache
    again = CheckpointLoader.load_checkpoint(filename)
    if scheme is url_of_mmcls:  # mmcls:// keeps the backbone, as mmengine's does
        state = dict(state_dict={'weight': torch.arange(3.)})
    for loaded in (checkpoint, again):
        torch.testing.assert_close(loaded, state)
    assert hub_cache_file(tmp_path, 'good.pth').is_file()


def test_url_checkpoint_with_training_state_loads(trained, served, tmp_path):
    """The allow-list of local checkpoints applies to URLs too."""
    folder, base = served
    (folder / 'iter_4.pth').write_bytes(trained.read_bytes())
    checkpoint = CheckpointLoader.load_checkpoint(f'{base}/iter_4.pth')
    assert checkpoint['meta']['iter'] == 4
    assert isinstance(checkpoint['message_hub']['log_scalars']['train/loss'],
                      HistoryBuffer)


def test_url_checkpoint_in_mod_squad_vit_init_cfg(served):
    from mod_squad.models import ModSquadViT
    folder, base = served
    tiny = dict(arch=dict(embed_dims=32, num_layers=2, num_heads=2,
                          feedforward_channels=64), img_size=32)
    source = ModSquadViT(**tiny)
    torch.save(source.state_dict(), folder / 'vit.pth')
    model = ModSquadViT(**tiny, init_cfg=dict(type='Pretrained',
                                              checkpoint=f'{base}/vit.pth'))
    model.init_weights()
    torch.testing.assert_close(model.state_dict(), source.state_dict())


@pytest.mark.parametrize('load', [
    load_through_load_checkpoint, load_through_mod_squad_vit_init_cfg,
    load_through_load_from
], ids=lambda load: load.__name__[13:])
@pytest.mark.parametrize('scheme', URL_SCHEMES, ids=lambda scheme: scheme.__name__[7:])
def test_crafted_url_checkpoint_is_refused_without_running_code(
        load, scheme, crafted, served, tmp_path, monkeypatch):
    path, marker = crafted
    folder, base = served
    (folder / 'crafted.pth').write_bytes(path.read_bytes())
    url = f'{base}/crafted.pth'
    with pytest.raises(UntrustedCheckpointError) as error:
        load(scheme(url, tmp_path, monkeypatch), tmp_path)
    assert not marker.exists()
    download = hub_cache_file(tmp_path, 'crafted.pth')
    message = str(error.value)
    assert message.startswith(f'{url} (downloaded to {download}) was not loaded: it '
                              'refers to `pathlib.Path`, which is not plain data')
    assert f'set {TRUST_ENV}={download} (several files separated by' in message


def test_open_mmlab_name_of_a_file_in_mmengine_home_loads_as_a_local_file(
        crafted, tmp_path, monkeypatch):
    """``$MMENGINE_HOME/open_mmlab.json`` may map a name to a file under
    ``MMENGINE_HOME``; here through mmengine's table of deprecated names."""
    path, marker = crafted
    home = tmp_path / 'mmengine'
    home.mkdir()
    (home / 'weights.pth').write_bytes(path.read_bytes())
    (home / 'open_mmlab.json').write_text(
        json.dumps({'detectron/resnet50_caffe': 'weights.pth'}))
    monkeypatch.setenv('MMENGINE_HOME', str(home))
    with pytest.raises(UntrustedCheckpointError,
                       match='^' + re.escape(f'{home / "weights.pth"} was not loaded')):
        CheckpointLoader.load_checkpoint('open-mmlab://resnet50_caffe')
    assert not marker.exists()


@pytest.mark.parametrize('trust, trusted', [
    (lambda url, download: '1', True),
    (lambda url, download: str(download), True),
    (lambda url, download: url, False),  # trust names the file, not the URL
], ids=['every file', 'the downloaded file', 'the URL'])
def test_trust_of_a_url_checkpoint_names_the_downloaded_file(
        trust, trusted, crafted, served, tmp_path, monkeypatch):
    path, marker = crafted
    folder, base = served
    (folder / 'crafted.pth').write_bytes(path.read_bytes())
    url = f'{base}/crafted.pth'
    monkeypatch.setenv(TRUST_ENV, trust(url, hub_cache_file(tmp_path, 'crafted.pth')))
    if trusted:
        assert set(CheckpointLoader.load_checkpoint(url)) == {'state_dict', 'meta'}
    else:
        with pytest.raises(UntrustedCheckpointError, match='was not loaded'):
            CheckpointLoader.load_checkpoint(url)
    assert marker.exists() == trusted


def test_a_downloaded_file_that_is_not_a_checkpoint_is_named(served, tmp_path):
    folder, base = served
    (folder / 'page.pth').write_text('<!DOCTYPE html><title>Sign in</title>')
    url = f'{base}/page.pth'
    download = hub_cache_file(tmp_path, 'page.pth')
    with pytest.raises(NotACheckpointError) as error:
        CheckpointLoader.load_checkpoint(url)
    assert str(error.value) == (
        f'{url} (downloaded to {download}) is not a PyTorch checkpoint: it is neither '
        'a zip archive nor a pickle, the formats torch.save writes (it starts with '
        f"b'<!DO'). Check the URL, and delete {download} to download it again.")
