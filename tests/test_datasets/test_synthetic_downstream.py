"""``make_synthetic.py --dataset downstream``: a classification set of classes, outlines
and textures that the joint set never draws, in the same layout, loadable by the stock
mmpretrain dataset, a pure function of the seed; the joint set is unchanged by it."""
import json
from pathlib import Path

import numpy as np
import pytest
from mmpretrain.registry import DATASETS

COUNTS = dict(num_train=24, num_val=12)


@pytest.fixture(scope='module')
def root(synthetic, tmp_path_factory):
    root = tmp_path_factory.mktemp('downstream')
    synthetic.generate_all(root, seed=3, dataset='downstream', cls=COUNTS)
    return root


def blocks(image: np.ndarray) -> np.ndarray:
    """Means of the 4 x 4 blocks of an (H, W, 3) image."""
    h, w, _ = image.shape
    return image.reshape(h // 4, 4, w // 4, 4, 3).astype(float).mean((1, 3))


def files(root: Path) -> dict:
    return {p.relative_to(root): p.read_bytes()
            for p in sorted(root.rglob('*')) if p.is_file()}


def test_classes_shapes_and_textures_are_new(synthetic):
    classes = synthetic.DOWNSTREAM_CLASSES
    assert len(classes) == 12 and classes == tuple(sorted(classes))
    assert classes == tuple(f'{s}-{t}' for s in synthetic.DOWNSTREAM_SHAPES
                            for t in synthetic.DOWNSTREAM_TEXTURES)
    joint_shapes = set(synthetic.CLS_CLASSES + synthetic.DET_CLASSES +
                       synthetic.SEG_THINGS + synthetic.DET_DISTRACTORS + ('stick', ))
    joint_textures = set(synthetic.TEXTURES + synthetic.SEG_STUFF)
    assert not joint_shapes & set(synthetic.DOWNSTREAM_SHAPES)
    assert not joint_textures & set(synthetic.DOWNSTREAM_TEXTURES)
    assert not set(classes) & (joint_shapes | joint_textures)


def test_neighbouring_hues_differ_in_outline_and_texture(synthetic):
    order = synthetic.DOWNSTREAM_HUE_ORDER
    assert sorted(order) == list(range(12))
    names = [synthetic.DOWNSTREAM_CLASSES[i].split('-') for i in order]
    for (shape, texture), (next_shape, next_texture) in zip(
            names, names[1:] + names[:1]):
        assert shape != next_shape and texture != next_texture


def test_layout_counts_and_stock_dataset(synthetic, root):
    meta = json.loads((root / 'meta.json').read_text())
    assert list(meta['summary']) == ['cls']  # no det / seg
    assert meta['summary']['cls']['classes'] == list(synthetic.DOWNSTREAM_CLASSES)
    assert meta['options']['cls'] == dict(COUNTS, img_size=64)
    for split in ('train', 'val'):
        dataset = DATASETS.build(dict(
            _scope_='mmpretrain', type='CustomDataset', data_root=str(root / 'cls'),
            ann_file=f'meta/{split}.txt', data_prefix=split,
            classes=synthetic.DOWNSTREAM_CLASSES,
            pipeline=[dict(type='LoadImageFromFile'), dict(type='PackInputs')]))
        assert len(dataset) == COUNTS[f'num_{split}']
        for item in dataset:
            sample = item['data_samples']
            index, label = int(Path(sample.img_path).stem), int(sample.gt_label)
            assert label == index % 12
            folder = Path(sample.img_path).parent.name
            assert folder == synthetic.DOWNSTREAM_CLASSES[label]
            drawn = synthetic.draw_downstream_sample(
                synthetic.sample_rng(3, 'downstream', split, index), label)
            loaded = item['inputs'].numpy().transpose(1, 2, 0)[..., ::-1]
            assert np.abs(blocks(loaded) - blocks(drawn)).mean() < 8  # JPEG loss


def test_deterministic_for_a_seed_on_its_own_random_stream(synthetic, root, tmp_path):
    synthetic.generate_all(tmp_path / 'again', seed=3, dataset='downstream', cls=COUNTS)
    assert files(tmp_path / 'again') == files(root)
    synthetic.generate_all(tmp_path / 'seed4', seed=4, dataset='downstream', cls=COUNTS)
    other = files(tmp_path / 'seed4')
    images = [k for k in other if k.suffix == '.jpg']
    assert all(other[k] != files(root)[k] for k in images)
    # its own random stream: not the joint cls images' of the same seed and index
    assert synthetic.sample_rng(3, 'downstream', 'train', 0).random() != (
        synthetic.sample_rng(3, 'cls', 'train', 0).random())


def test_the_joint_set_is_the_default_and_unchanged(synthetic, tmp_path):
    meta = synthetic.generate_all(tmp_path, seed=3, cls=dict(num_train=2, num_val=1),
                                  det=dict(num_train=1, num_val=1),
                                  seg=dict(num_train=1, num_val=1))
    assert list(meta['summary']) == ['cls', 'det', 'seg']
    assert 'dataset' not in meta['options']
    assert meta['summary']['cls']['classes'] == list(synthetic.CLS_CLASSES)


def test_unknown_dataset_or_task(synthetic, tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        synthetic.generate_all(tmp_path, dataset='imagenet')
    with pytest.raises(TypeError,
                       match=r"unknown tasks \['det'\] of dataset 'downstream'"):
        synthetic.generate_all(tmp_path, dataset='downstream', det=dict(num_train=1))
    with pytest.raises(SystemExit, match="--dataset downstream has no task 'det'"):
        synthetic.main(['--dataset', 'downstream', '--out', str(tmp_path),
                        '--det-train', '3'])
