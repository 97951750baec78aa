"""The combined configs: the full ImageNet + COCO + ADE20K recipe builds and says which
data is missing; it and the demo are siblings on shared ``_base_`` files."""
import ast
import copy
import os.path as osp
import re

import pytest
from mmengine.config import Config
from mmengine.registry import init_default_scope

from mod_squad.registry import DATASETS, MODELS

CONFIG_DIR = 'configs/mod_squad/'
CONFIG = (CONFIG_DIR +
          'mod-squad_vit-b-p16_mask-rcnn_upernet_8xb64-2-2-160k_in1k-coco-ade20k.py')
DEMO_CONFIG = CONFIG_DIR + 'mod-squad_vit-demo_2k_synthetic-cls-det-seg.py'


@pytest.fixture(scope='module')
def cfg():
    return Config.fromfile(CONFIG)


def test_full_recipe_model_builds_with_the_authors_settings(cfg):
    init_default_scope('mod_squad')
    model = MODELS.build(cfg.model)
    assert model.task_names == ('cls', 'det', 'seg')
    assert model.loss_weights == dict(cls=1.0, det=0.6, seg=0.2)
    assert model.backbone.embed_dims == 768
    assert (model.backbone.layers[1].ffn.num_experts,
            model.backbone.layers[1].ffn.top_k) == (16, 4)
    assert model.branches['det'].roi_head.bbox_head.num_classes == 80
    assert model.branches['seg'].decode_head.num_classes == 150
    assert cfg.train_dataloader.batch_sampler.ratios == dict(cls=15, det=10, seg=5)
    assert cfg.train_dataloader.batch_sampler.batch_sizes == dict(cls=64, det=2, seg=2)


def test_missing_real_data_names_task_and_path(cfg, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no data/ here
    with pytest.raises(FileNotFoundError, match=r"task 'cls'.*data/imagenet"):
        DATASETS.build(copy.deepcopy(cfg.train_dataloader.dataset))


def _base_files(path):
    """The ``_base_`` list of a config file, read without evaluating it."""
    for node in ast.parse(open(path).read()).body:
        if isinstance(node, ast.Assign) and node.targets[0].id == '_base_':
            return ast.literal_eval(node.value)
    return []


@pytest.mark.parametrize('path', [DEMO_CONFIG, CONFIG])
def test_combined_configs_are_siblings_on_shared_bases(path):
    bases = _base_files(path)
    assert [osp.dirname(base) for base in bases] == [
        './_base_/models', './_base_/datasets', './_base_/schedules', './_base_'
    ]
    assert bases[-1] == './_base_/default_runtime.py'
    for file in [path] + [osp.join(CONFIG_DIR, base) for base in bases]:
        assert '_delete_' not in open(file).read(), file


def test_full_recipe_name_states_per_task_batches_and_schedule(cfg):
    gpus, *batches, kilo_iters = map(
        int, re.search(r'_(\d+)xb(\d+)-(\d+)-(\d+)-(\d+)k_in1k-coco-ade20k\.py$',
                       CONFIG).groups())
    sizes = cfg.train_dataloader.batch_sampler.batch_sizes
    assert (gpus, batches) == (8, [sizes['cls'], sizes['det'], sizes['seg']])
    assert kilo_iters * 1000 == cfg.train_cfg.max_iters


def test_child_config_replaces_one_task_pipeline(tmp_path):
    child = tmp_path / 'child.py'
    child.write_text(
        f'_base_ = {osp.abspath(DEMO_CONFIG)!r}\n'
        'train_dataloader = dict(dataset=dict(datasets=dict(\n'
        "    det=dict(pipeline=[dict(type='LoadImageFromFile')]))))\n")
    demo = Config.fromfile(DEMO_CONFIG).train_dataloader
    train_dataloader = Config.fromfile(str(child)).train_dataloader
    det = train_dataloader.dataset.datasets.pop('det')
    assert det.pipeline == [dict(type='LoadImageFromFile')]
    assert det.ann_file == demo.dataset.datasets.det.ann_file
    demo.dataset.datasets.pop('det')
    assert train_dataloader == demo
