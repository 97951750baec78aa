"""tools/dataset_converters/make_synthetic.py: the synthetic data loads through the
stock mmpretrain, mmdet and mmseg datasets and matches what the generator drew."""
import importlib
from pathlib import Path

import numpy as np
import pytest
import torch
from mmdet.registry import METRICS

SEED = 3
SMALL = dict(
    cls=dict(num_train=20, num_val=10),
    det=dict(num_train=6, num_val=3, max_instances=4),
    seg=dict(num_train=6, num_val=3))


@pytest.fixture(scope='module')
def data_root(synthetic, tmp_path_factory):
    root = tmp_path_factory.mktemp('synthetic')
    synthetic.generate_all(root, seed=SEED, **SMALL)
    return root


@pytest.fixture(scope='module', autouse=True)
def register_toolboxes():
    for toolbox in ('mmpretrain', 'mmdet', 'mmseg'):
        importlib.import_module(f'{toolbox}.utils').register_all_modules(
            init_default_scope=False)


def build_dataset(scope: str, **cfg):
    """Build a dataset and its pipeline in ``scope``'s registries."""
    registry = importlib.import_module(f'{scope}.registry').DATASETS
    return registry.build(dict(_scope_=scope, **cfg))


def assert_same_image(loaded, drawn: np.ndarray):
    """A loaded (3, H, W) BGR tensor is the drawn RGB image up to JPEG loss,
    compared as means of 4x4 blocks (other images differ by over 20)."""
    loaded = loaded.numpy().transpose(1, 2, 0)[..., ::-1]
    assert loaded.shape == drawn.shape
    h, w, _ = drawn.shape

    def blocks(image):
        return image.reshape(h // 4, 4, w // 4, 4, 3).astype(float).mean(
            (1, 3))

    assert np.abs(blocks(loaded) - blocks(drawn)).mean() < 8


def files(root: Path) -> dict:
    return {
        p.relative_to(root): p.read_bytes()
        for p in sorted(root.rglob('*')) if p.is_file()
    }


@pytest.mark.parametrize('split', ['train', 'val'])
@pytest.mark.parametrize('source', ['ann_file', 'folders', 'imagenet'])
def test_cls_loads_with_stock_dataset(synthetic, data_root, split, source):
    cfg = dict(
        type='CustomDataset',
        data_root=str(data_root / 'cls'),
        ann_file=f'meta/{split}.txt',
        data_prefix=split,
        metainfo=dict(classes=synthetic.CLS_CLASSES),
        pipeline=[dict(type='LoadImageFromFile'),
                  dict(type='PackInputs')])
    if source == 'folders':
        cfg.pop('ann_file')
    elif source == 'imagenet':
        cfg.update(type='ImageNet', split=split, ann_file='', data_prefix='')
    dataset = build_dataset('mmpretrain', **cfg)

    assert len(dataset) == SMALL['cls'][f'num_{split}']
    assert dataset.metainfo['classes'] == synthetic.CLS_CLASSES
    for item in dataset:
        index = int(Path(item['data_samples'].img_path).stem)
        label = int(item['data_samples'].gt_label)
        assert label == index % len(synthetic.CLS_CLASSES)
        rng = synthetic.sample_rng(SEED, 'cls', split, index)
        drawn = synthetic.draw_cls_sample(rng, label)
        assert_same_image(item['inputs'], drawn)


def build_det_dataset(synthetic, root: Path, split: str, **kwargs):
    return build_dataset(
        'mmdet',
        type='CocoDataset',
        data_root=str(root / 'det'),
        ann_file=f'annotations/instances_{split}.json',
        data_prefix=dict(img=f'{split}/'),
        metainfo=dict(classes=synthetic.DET_CLASSES),
        pipeline=[
            dict(type='LoadImageFromFile'),
            dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
            dict(type='PackDetInputs')
        ],
        **kwargs)


@pytest.mark.parametrize('split', ['train', 'val'])
def test_det_masks_and_boxes_match_drawing(synthetic, data_root, split):
    dataset = build_det_dataset(synthetic, data_root, split)
    assert len(dataset) == SMALL['det'][f'num_{split}']
    assert dataset.metainfo['classes'] == synthetic.DET_CLASSES
    for item in dataset:
        sample = item['data_samples']
        image, instances = synthetic.draw_det_sample(
            synthetic.sample_rng(SEED, 'det', split, sample.img_id - 1),
            max_instances=SMALL['det']['max_instances'])
        assert_same_image(item['inputs'], image)
        gt = sample.gt_instances
        assert 1 <= len(gt) <= SMALL['det']['max_instances']
        np.testing.assert_array_equal(gt.labels.numpy(),
                                      [i['label'] for i in instances])
        masks = gt.masks.masks.astype(bool)
        np.testing.assert_array_equal(masks,
                                      np.stack([i['mask'] for i in instances]))
        assert not (masks.sum(0) > 1).any(), 'instances overlap'
        for mask, box in zip(masks, gt.bboxes.tensor.numpy()):
            xs = np.flatnonzero(mask.any(0))
            ys = np.flatnonzero(mask.any(1))
            tight = [xs[0], ys[0], xs[-1] + 1, ys[-1] + 1]
            np.testing.assert_allclose(box, tight, atol=1)


@pytest.mark.parametrize('split,folder', [('train', 'training'),
                                          ('val', 'validation')])
def test_seg_labels_match_drawing(synthetic, data_root, split, folder):
    dataset = build_dataset(
        'mmseg',
        type='BaseSegDataset',
        data_root=str(data_root / 'seg'),
        data_prefix=dict(
            img_path=f'images/{folder}', seg_map_path=f'annotations/{folder}'),
        img_suffix='.jpg',
        seg_map_suffix='.png',
        reduce_zero_label=True,
        metainfo=dict(classes=synthetic.SEG_CLASSES),
        pipeline=[
            dict(type='LoadImageFromFile'),
            dict(type='LoadAnnotations'),
            dict(type='PackSegInputs')
        ])

    assert len(dataset) == SMALL['seg'][f'num_{split}']
    assert dataset.metainfo['classes'] == synthetic.SEG_CLASSES
    seen = set()
    for item in dataset:
        sample = item['data_samples']
        index = int(Path(sample.img_path).stem)
        rng = synthetic.sample_rng(SEED, 'seg', split, index)
        image, seg_map = synthetic.draw_seg_sample(rng)
        assert_same_image(item['inputs'], image)
        labels = sample.gt_sem_seg.data[0].numpy()
        np.testing.assert_array_equal(labels, (seg_map.astype(int) - 1) % 256)
        seen.update(np.unique(labels).tolist())
    assert seen <= set(range(len(synthetic.SEG_CLASSES))) | {255}


def test_det_ground_truth_scores_perfect_coco_ap(synthetic, data_root):
    dataset = build_det_dataset(synthetic, data_root, 'val', test_mode=True)
    metric = METRICS.build(
        dict(
            type='CocoMetric',
            _scope_='mmdet',
            ann_file=str(data_root / 'det/annotations/instances_val.json'),
            metric=['bbox', 'segm']))
    metric.dataset_meta = dataset.metainfo
    for item in dataset:
        sample = item['data_samples']
        gt = sample.gt_instances
        pred = dict(
            bboxes=gt.bboxes.tensor,
            labels=gt.labels,
            scores=torch.ones(len(gt)),
            masks=torch.from_numpy(gt.masks.masks.astype(bool)))
        metric.process({}, [
            dict(
                img_id=sample.img_id,
                ori_shape=sample.ori_shape,
                pred_instances=pred)
        ])
    results = metric.evaluate(len(dataset))
    assert results['coco/bbox_mAP'] == results['coco/segm_mAP'] == 1.0


def test_same_seed_is_byte_identical_and_seed_matters(synthetic, data_root,
                                                      tmp_path):
    synthetic.generate_all(tmp_path / 'same', seed=SEED, **SMALL)
    synthetic.generate_all(tmp_path / 'other', seed=SEED + 1, **SMALL)
    reference = files(data_root)
    assert files(tmp_path / 'same') == reference
    other = files(tmp_path / 'other')
    assert other.keys() == reference.keys()
    images = [k for k in reference if k.suffix in ('.jpg', '.png')]
    assert all(other[k] != reference[k] for k in images)


def test_counts_do_not_reshuffle_images(synthetic, data_root, tmp_path):
    synthetic.generate_all(tmp_path, seed=SEED,
                           **dict(SMALL, cls=dict(num_train=30)))
    more = files(tmp_path / 'cls' / 'train')
    small = files(data_root / 'cls' / 'train')
    assert len(more) == 30
    assert all(more[name] == data for name, data in small.items())


def test_rerun_is_skipped_unless_forced_or_changed(synthetic, tmp_path):

    def run(**kwargs):
        logs = []
        meta = synthetic.generate_all(tmp_path, seed=SEED, log=logs.append, **kwargs)
        return meta, ' '.join(logs)

    meta, logs = run(**SMALL)
    assert 'cls/train: 20 images' in logs
    assert run(**SMALL) == (meta, f'{tmp_path} is up to date '
                            '(use force to regenerate)')
    assert 'cls/train: 20 images' in run(force=True, **SMALL)[1]

    meta, logs = run(**dict(SMALL, cls=dict(num_train=4, num_val=2)))
    assert meta['options']['cls']['num_train'] == 4
    assert 'cls/train: 4 images' in logs
    assert len(list((tmp_path / 'cls' / 'train').rglob('*.jpg'))) == 4


def hsv(pixels: np.ndarray) -> np.ndarray:
    """(N, 3) RGB in [0, 255] -> (N, 3) HSV in [0, 1]."""
    rgb = pixels / 255
    value, low = rgb.max(1), rgb.min(1)
    saturation = np.where(value > 0, (value - low) / np.maximum(value, 1e-6), 0)
    r, g, b = rgb.T
    delta = np.maximum(value - low, 1e-6)
    hue = np.select([value == r, value == g],
                    [(g - b) / delta, 2 + (b - r) / delta], 4 + (r - g) / delta)
    return np.stack([hue / 6 % 1, saturation, value], 1)


def hue_class(pixels: np.ndarray, num_classes: int) -> int:
    """The class whose hue band holds the median hue of ``pixels``."""
    hue = np.median(hsv(pixels)[:, 0])
    return int(np.round(hue * num_classes)) % num_classes


@pytest.mark.parametrize('index', range(6))
def test_labelled_shapes_wear_their_class_hue_on_muted_backgrounds(synthetic, index):
    image, instances = synthetic.draw_det_sample(
        synthetic.sample_rng(SEED, 'det', 'train', index))
    pixels = image.reshape(-1, 3).astype(float)
    for instance in instances:
        inside = pixels[instance['mask'].ravel()]
        assert hue_class(inside, len(synthetic.DET_CLASSES)) == instance['label']
        assert np.median(hsv(inside)[:, 1]) > 0.4
    labelled = np.any([i['mask'] for i in instances], 0).ravel()
    assert np.median(hsv(pixels[~labelled])[:, 1]) < 0.35

    label = index % len(synthetic.CLS_CLASSES)
    image = synthetic.draw_cls_sample(
        synthetic.sample_rng(SEED, 'cls', 'train', index), label)
    saturated = image.reshape(-1, 3)[hsv(image.reshape(-1, 3).astype(float))[:, 1] > 0.5]
    assert hue_class(saturated.astype(float), len(synthetic.CLS_CLASSES)) == label


def test_cli_generates_and_summarises(synthetic, tmp_path, capsys):
    synthetic.main(f'--out {tmp_path} --cls-train 3 --cls-val 2 --cls-size 32 '
                   '--det-train 2 --det-val 1 --det-max-instances 2 '
                   '--seg-train 2 --seg-val 1'.split())
    out = capsys.readouterr().out
    assert 'cls/train: 3 images' in out
    assert 'cls: 3 train / 2 val, 32 px' in out
    assert len(list((tmp_path / 'det' / 'train').glob('*.jpg'))) == 2
