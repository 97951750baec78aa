"""The full ImageNet + COCO + ADE20K recipe builds, and says which data is missing."""
import copy

import pytest
from mmengine.config import Config
from mmengine.registry import init_default_scope

from mod_squad.registry import DATASETS, MODELS

CONFIG = ('configs/mod_squad/'
          'mod-squad_vit-b-p16_mask-rcnn_upernet_8xb_160k_in1k-coco-ade20k.py')


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
