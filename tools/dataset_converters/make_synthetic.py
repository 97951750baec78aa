"""Generate procedural classification, detection and segmentation data in the
on-disk formats the stock dataset classes read (the demo's ``data/synthetic``).

Classification follows mmpretrain's ImageNet layout, detection COCO's instance
json and segmentation ADE20K's layout, so mmpretrain ``CustomDataset``, mmdet
``CocoDataset`` and mmseg ``BaseSegDataset`` load them unchanged. A labelled
shape carries its class twice: by its outline and by its colour, drawn from the
class's own band of hues, as real categories have typical looks; backgrounds,
stuff textures and unlabelled distractors are in muted colours (saturation at
most 0.25). This keeps the classes learnable by a small ViT trained from
scratch for minutes on a CPU; stuff classes are textures only. Every
image has its own generator, :func:`sample_rng`, so the output is a pure
function of the options and changing a count never reshuffles other images.

Layout under ``out_dir``::

    cls/{train,val}/<class>/<index>.jpg
    cls/meta/{train,val}.txt           # lines "<class>/<index>.jpg <label>"
    det/{train,val}/<index>.jpg
    det/annotations/instances_{train,val}.json     # COCO, polygon masks
    seg/images/{training,validation}/<index>.jpg
    seg/annotations/{training,validation}/<index>.png  # class i as i + 1
    meta.json                          # options and summary

``--dataset downstream`` makes another set for fine-tuning experiments
(``configs/mod_squad/downstream``): ``cls/`` only, in the same layout, with
classes the joint set never shows, a new outline and a new fill texture each
(``DOWNSTREAM_CLASSES``, e.g. ``tee-rings``). A class's hue band is three
classes wide and its neighbours on the hue circle have other outlines and
textures, so colour narrows a class down to three and outline or texture must
decide (colour alone gives about one in three right).

Example:
    python tools/dataset_converters/make_synthetic.py --out data/synthetic
    python tools/dataset_converters/make_synthetic.py --dataset downstream \
        --out data/synthetic_downstream
"""
import argparse
import colorsys
import inspect
import json
import shutil
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import pycocotools.mask as mask_utils
from PIL import Image

__all__ = [
    'CLS_CLASSES', 'DET_CLASSES', 'SEG_CLASSES', 'SEG_STUFF', 'SEG_THINGS',
    'SHAPES', 'sample_rng', 'rasterize', 'draw_cls_sample', 'draw_det_sample',
    'draw_seg_sample', 'generate_cls', 'generate_det', 'generate_seg',
    'generate_all', 'GENERATORS', 'DOWNSTREAM_CLASSES', 'DOWNSTREAM_SHAPES',
    'DOWNSTREAM_TEXTURES', 'DOWNSTREAM_HUE_ORDER', 'draw_downstream_sample',
    'generate_downstream_cls', 'DATASETS'
]

# Bump when the drawing changes, so that existing outputs are regenerated.
GENERATOR_VERSION = 3

# Sorted: mmpretrain's folder scan then gives the labels of the ann file.
CLS_CLASSES = ('arrow', 'circle', 'crescent', 'cross', 'heart', 'hexagon',
               'pentagon', 'square', 'star', 'triangle')
DET_CLASSES = ('circle', 'triangle', 'square', 'star', 'cross')
SEG_STUFF = ('plain', 'stripes', 'checker', 'dots', 'noise', 'waves')
SEG_THINGS = ('circle', 'triangle', 'star')
SEG_CLASSES = SEG_STUFF + SEG_THINGS

TEXTURES = ('plain', 'gradient', 'stripes', 'checker', 'dots', 'noise',
            'waves')
DET_DISTRACTORS = ('crescent', 'arrow', 'heart', 'stick')
# The downstream set: outlines and fill textures that no joint set draws; a
# class is one of each, e.g. 'tee-rings' (sorted, as CLS_CLASSES).
DOWNSTREAM_SHAPES = ('bowtie', 'chevron', 'diamond', 'tee')
DOWNSTREAM_TEXTURES = ('grid', 'rings', 'zigzag')
DOWNSTREAM_CLASSES = tuple(f'{shape}-{texture}' for shape in DOWNSTREAM_SHAPES
                           for texture in DOWNSTREAM_TEXTURES)
# Labels in their order around the hue circle: the j-th has shape j mod 4 and
# texture j mod 3, so neighbouring hues differ in both outline and texture.
DOWNSTREAM_HUE_ORDER = tuple(
    DOWNSTREAM_CLASSES.index(
        f'{DOWNSTREAM_SHAPES[j % len(DOWNSTREAM_SHAPES)]}-'
        f'{DOWNSTREAM_TEXTURES[j % len(DOWNSTREAM_TEXTURES)]}')
    for j in range(len(DOWNSTREAM_CLASSES)))
SPLITS = ('train', 'val')
SEG_SPLIT_DIRS = dict(train='training', val='validation')
# Random streams of sample_rng; 'downstream' draws the downstream set's images.
_TASK_IDS = dict(cls=0, det=1, seg=2, downstream=3)


def _regular(n: int, inner: Optional[float] = None) -> np.ndarray:
    """Regular n-gon, or an n-pointed star with inner radius ``inner``."""
    k = 2 * n if inner else n
    theta = 2 * np.pi * np.arange(k) / k
    points = np.stack([np.cos(theta), np.sin(theta)], 1)
    if inner:
        points[1::2] *= inner
    return points


def _crescent(offset: float = 0.45, inner: float = 0.8) -> np.ndarray:
    """Unit disc minus a disc of radius ``inner`` shifted by ``offset``."""
    x = (1 - inner**2 + offset**2) / (2 * offset)  # where the circles cross
    y = np.sqrt(1 - x**2)
    outer = np.linspace(np.arctan2(y, x), 2 * np.pi - np.arctan2(y, x), 24)
    back = np.arctan2(y, x - offset)
    back = np.linspace(2 * np.pi - back, back, 24)[1:-1]
    return np.concatenate([
        np.stack([np.cos(outer), np.sin(outer)], 1),
        np.stack([offset + inner * np.cos(back), inner * np.sin(back)], 1)
    ])


def _cross(arm: float = 0.3) -> np.ndarray:
    """Plus sign whose arms have half-width ``arm``."""
    quarter = np.array([(arm, 1), (arm, arm), (1, arm)])
    turn = np.array([[0, -1], [1, 0]])  # (x, y) -> (y, -x)
    return np.concatenate(
        [quarter @ np.linalg.matrix_power(turn, k) for k in range(4)])


def _arrow(shaft: float = 0.2, head: float = 0.55) -> np.ndarray:
    """Arrow along x with shaft and head of half-widths ``shaft``, ``head``."""
    half = np.array([(-1, shaft), (0.2, shaft), (0.2, head), (1, 0)])
    return np.concatenate([half * (1, -1), half[-2::-1]])


def _heart() -> np.ndarray:
    """Heart curve, upright in image coordinates (y down)."""
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
    return np.stack([16 * np.sin(t)**3, -y], 1)


def _bowtie(waist: float = 0.15, height: float = 0.7) -> np.ndarray:
    """Two triangles along x meeting at a waist of half-height ``waist``."""
    half = np.array([(-1, height), (0, waist), (1, height)])
    return np.concatenate([half * (1, -1), half[::-1]])


def _chevron(thickness: float = 0.6) -> np.ndarray:
    """A V of arms ``thickness`` thick (along y)."""
    inner = np.array([(-1, -0.6), (0, 0.4), (1, -0.6)])
    return np.concatenate([inner, inner[::-1] + (0, thickness)])


def _tee(bar: float = 0.45, stem: float = 0.22) -> np.ndarray:
    """A T: a bar ``bar`` high on a stem of half-width ``stem``."""
    return np.array([(-1, -1), (1, -1), (1, bar - 1), (stem, bar - 1),
                     (stem, 1), (-stem, 1), (-stem, bar - 1), (-1, bar - 1)])


def _normalise(points: np.ndarray) -> np.ndarray:
    """Centre a polygon on its box and scale its farthest vertex to 1."""
    points = points - (points.max(0) + points.min(0)) / 2
    return points / np.linalg.norm(points, axis=1).max()


# Unit polygons (N, 2) in xy, centred, circumradius 1.
SHAPES = {
    name: _normalise(points)
    for name, points in dict(
        circle=_regular(48),
        triangle=_regular(3),
        square=_regular(4),
        pentagon=_regular(5),
        hexagon=_regular(6),
        star=_regular(5, inner=0.45),
        cross=_cross(),
        crescent=_crescent(),
        heart=_heart(),
        arrow=_arrow(),
        stick=np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)]) * (1, 0.06),
        bowtie=_bowtie(),
        chevron=_chevron(),
        diamond=_regular(4) * (1, 0.55),
        tee=_tee(),
    ).items()
}


def sample_rng(seed: int, task: str, split: str,
               index: int) -> np.random.Generator:
    """The generator that draws image ``index`` of ``task``/``split``."""
    key = [seed, _TASK_IDS[task], SPLITS.index(split), index]
    return np.random.default_rng(key)


def rasterize(polygon: np.ndarray, size: int) -> np.ndarray:
    """Bool mask (size, size) of a polygon (N, 2) in xy, decoded exactly as
    pycocotools, and so mmdet's ``LoadAnnotations``, decodes it."""
    rle = mask_utils.frPyObjects([polygon.ravel().tolist()], size, size)
    return mask_utils.decode(rle)[..., 0].astype(bool)


def _random_shape(rng: np.random.Generator, name: str, size: int,
                  radius_range: tuple) -> tuple:
    """Randomly rotated, squashed and placed polygon of shape ``name`` inside
    a ``size`` image; its circumradius is a fraction of ``size`` drawn from
    ``radius_range``.

    Returns:
        tuple: polygon (N, 2) rounded to 0.01 px, centre (2,), radius.
    """
    radius = rng.uniform(*radius_range) * size
    centre = rng.uniform(radius, size - radius, 2)
    theta = rng.uniform(0, 2 * np.pi)
    rotation = np.array([[np.cos(theta), np.sin(theta)],
                         [-np.sin(theta), np.cos(theta)]])
    points = SHAPES[name] * (1.0, rng.uniform(0.7, 1.0)) @ rotation
    return np.round(points * radius + centre, 2), centre, radius


def _hsv(hue: float, saturation: float, value: float) -> np.ndarray:
    """RGB colour (3,) in [0, 255] of an HSV colour with channels in [0, 1]."""
    return np.array(colorsys.hsv_to_rgb(hue % 1, saturation, value)) * 255


def _muted_colours(rng: np.random.Generator, contrast: tuple) -> np.ndarray:
    """Two muted colours (2, 3) of saturation at most 0.25 whose brightness
    differs by a fraction drawn from ``contrast``."""
    value = rng.uniform(0.15, 0.9)
    step = rng.uniform(*contrast)
    second = value + step if value + step < 0.95 else value - step
    return np.stack([
        _hsv(rng.random(), rng.uniform(0, 0.25), v) for v in (value, second)
    ])


def _class_colours(rng: np.random.Generator, label: int,
                   num_classes: int) -> np.ndarray:
    """Two saturated colours (2, 3) from the hue band of class ``label``:
    hue ``(label + u) / num_classes`` with ``u`` in [-0.25, 0.25], so the
    bands of neighbouring classes stay half a band apart."""
    hue = (label + rng.uniform(-0.25, 0.25)) / num_classes
    saturation, value = rng.uniform(0.55, 1), rng.uniform(0.6, 1)
    return np.stack([
        _hsv(hue, saturation, value),
        _hsv(hue, saturation * rng.uniform(0.6, 1), value * rng.uniform(0.5, 0.8))
    ])


def _pattern(rng: np.random.Generator, kind: str, size: int) -> np.ndarray:
    """Weight map (size, size) in [0, 1] between a texture's two colours."""
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    theta = rng.uniform(0, np.pi)
    u = xx * np.cos(theta) + yy * np.sin(theta)
    v = yy * np.cos(theta) - xx * np.sin(theta)
    period = rng.uniform(4, 12)
    if kind == 'plain':
        weight = np.zeros_like(u)
    elif kind == 'gradient':
        weight = (u - u.min()) / (u.max() - u.min())
    elif kind == 'stripes':
        weight = u / period % 1 < rng.uniform(0.3, 0.7)
    elif kind == 'checker':
        weight = (np.floor(u / period) + np.floor(v / period)) % 2
    elif kind == 'dots':
        weight = np.hypot(u % period - period / 2, v % period - period / 2)
        weight = weight < rng.uniform(0.2, 0.35) * period
    elif kind == 'noise':
        cell = rng.integers(1, 4)
        weight = rng.random((size // cell + 1, size // cell + 1))
        weight = weight.repeat(cell, 0).repeat(cell, 1)[:size, :size]
    elif kind == 'waves':
        wobble = rng.uniform(0.3, 1) * np.sin(v / rng.uniform(3, 6))
        weight = np.sin(2 * np.pi * (u / period + wobble)) > 0
    elif kind == 'grid':  # thin lines both ways
        width = rng.uniform(0.2, 0.35) * period
        weight = (u % period < width) | (v % period < width)
    elif kind == 'rings':  # concentric about a point of the central half
        centre = rng.uniform(0.25, 0.75, 2) * size
        weight = np.hypot(xx - centre[0], yy - centre[1]) / period % 1 < 0.5
    elif kind == 'zigzag':  # stripes bent by a triangle wave
        pitch = rng.uniform(4, 8)
        shift = rng.uniform(0.5, 1) * period * np.abs(v / pitch % 2 - 1)
        weight = (u + shift) / period % 1 < 0.5
    else:
        raise ValueError(f'unknown texture {kind!r}')
    return weight.astype(np.float64)


def _texture(rng: np.random.Generator, kind: str, size: int,
             colours: np.ndarray) -> np.ndarray:
    """Float image (size, size, 3) of texture ``kind`` in two ``colours``."""
    weight = _pattern(rng, kind, size)[..., None]
    return colours[0] * (1 - weight) + colours[1] * weight


def _downstream_colours(rng: np.random.Generator, label: int) -> np.ndarray:
    """Two colours (2, 3) of one hue from a band three classes wide around the
    place of ``DOWNSTREAM_CLASSES[label]`` on the hue circle
    (``DOWNSTREAM_HUE_ORDER``), the second darker for the texture's contrast."""
    slot = DOWNSTREAM_HUE_ORDER.index(label)
    hue = (slot + rng.uniform(-1.5, 1.5)) / len(DOWNSTREAM_CLASSES)
    saturation, value = rng.uniform(0.55, 1), rng.uniform(0.6, 1)
    return np.stack([
        _hsv(hue, saturation, value),
        _hsv(hue, saturation * rng.uniform(0.6, 1),
             value * rng.uniform(0.3, 0.6))
    ])


def _paint(rng: np.random.Generator, canvas: np.ndarray, mask: np.ndarray,
           colours: np.ndarray) -> None:
    """Fill ``mask`` with the first of two ``colours`` or, half the time, a
    random texture in both."""
    kind = 'plain' if rng.random() < 0.5 else rng.choice(TEXTURES)
    canvas[mask] = _texture(rng, kind, len(canvas), colours)[mask]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Random low-contrast muted texture (size, size, 3)."""
    return _texture(rng, rng.choice(TEXTURES), size,
                    _muted_colours(rng, (0.05, 0.2)))


def _clutter(rng: np.random.Generator, canvas: np.ndarray, names: tuple,
             max_num: int, radius_range: tuple) -> np.ndarray:
    """Paint up to ``max_num`` unlabelled shapes in muted colours; returns
    their union mask."""
    size = len(canvas)
    union = np.zeros((size, size), bool)
    for _ in range(rng.integers(0, max_num + 1)):
        polygon = _random_shape(rng, rng.choice(names), size, radius_range)[0]
        mask = rasterize(polygon, size)
        _paint(rng, canvas, mask, _muted_colours(rng, (0.1, 0.3)))
        union |= mask
    return union


def _finish(rng: np.random.Generator, canvas: np.ndarray) -> np.ndarray:
    """Apply a random lighting ramp and sensor noise; returns uint8 RGB."""
    ramp = _pattern(rng, 'gradient', len(canvas))[..., None] - 0.5
    image = canvas * (1 + rng.uniform(0, 0.4) * ramp)
    image += rng.normal(0, rng.uniform(2, 8), image.shape)
    return np.clip(image.round(), 0, 255).astype(np.uint8)


def draw_cls_sample(rng: np.random.Generator,
                    label: int,
                    img_size: int = 64) -> np.ndarray:
    """One shape of class ``CLS_CLASSES[label]``, in the class's hues, over
    a random muted background and stick clutter. Returns the RGB image (img_size, img_size, 3)."""
    canvas = _background(rng, img_size)
    _clutter(rng, canvas, ('stick', ), 3, (0.15, 0.4))
    polygon = _random_shape(rng, CLS_CLASSES[label], img_size, (0.25, 0.45))[0]
    _paint(rng, canvas, rasterize(polygon, img_size),
           _class_colours(rng, label, len(CLS_CLASSES)))
    return _finish(rng, canvas)


def draw_downstream_sample(rng: np.random.Generator,
                           label: int,
                           img_size: int = 64) -> np.ndarray:
    """One shape of class ``DOWNSTREAM_CLASSES[label]``: its outline filled with
    its texture in two shades of a hue that narrows the class down to three
    (:func:`_downstream_colours`), over a random muted background and stick
    clutter. Returns the RGB image (img_size, img_size, 3)."""
    shape, texture = DOWNSTREAM_CLASSES[label].split('-')
    canvas = _background(rng, img_size)
    _clutter(rng, canvas, ('stick', ), 3, (0.15, 0.4))
    polygon = _random_shape(rng, shape, img_size, (0.3, 0.45))[0]
    mask = rasterize(polygon, img_size)
    canvas[mask] = _texture(rng, texture, img_size,
                            _downstream_colours(rng, label))[mask]
    return _finish(rng, canvas)


def draw_det_sample(rng: np.random.Generator,
                    img_size: int = 128,
                    max_instances: int = 4) -> tuple:
    """1 to ``max_instances`` disjoint shapes of ``DET_CLASSES``, each in its
    class's hues, over a random muted background and muted unlabelled
    distractor shapes.

    Returns:
        tuple: RGB image (img_size, img_size, 3) and the instances, a list of
        dicts with ``label`` (index in ``DET_CLASSES``), ``polygon`` (N, 2)
        and the drawn ``mask`` (img_size, img_size) bool.
    """
    canvas = _background(rng, img_size)
    _clutter(rng, canvas, DET_DISTRACTORS, 3, (0.06, 0.15))
    num = rng.integers(1, max_instances + 1)
    instances, discs = [], []
    for _ in range(20 * num):
        label = int(rng.integers(len(DET_CLASSES)))
        polygon, centre, radius = _random_shape(rng, DET_CLASSES[label],
                                                img_size, (0.14, 0.3))
        # Circumscribed discs 2 px apart keep the masks disjoint.
        if any(np.linalg.norm(centre - c) < radius + r + 2 for c, r in discs):
            continue
        mask = rasterize(polygon, img_size)
        _paint(rng, canvas, mask, _class_colours(rng, label, len(DET_CLASSES)))
        discs.append((centre, radius))
        instances.append(dict(label=label, polygon=polygon, mask=mask))
        if len(instances) == num:
            break
    return _finish(rng, canvas), instances


def draw_seg_sample(rng: np.random.Generator, img_size: int = 128) -> tuple:
    """Wobbly Voronoi regions of ``SEG_STUFF`` textures in muted colours, stick
    clutter left unlabelled, then one to four possibly overlapping
    ``SEG_THINGS`` in their class's hues.

    Returns:
        tuple: RGB image (img_size, img_size, 3) and the uint8 label map as
        stored, ADE20K-style: 0 = other (ignored), class i as i + 1.
    """
    num = rng.integers(2, 6)
    seeds = rng.uniform(0, img_size, (num, 2, 1, 1))
    freq = rng.uniform(2, 6, (num, 2, 1, 1)) * np.pi / img_size
    phase = rng.uniform(0, 2 * np.pi, (num, 2, 1, 1))
    grid = np.mgrid[:img_size, :img_size][::-1].astype(np.float64)  # xy
    wobble = 0.08 * img_size * np.sin(freq * grid + phase).sum(1)
    region = (np.linalg.norm(grid - seeds, axis=1) + wobble).argmin(0)

    stuff = rng.integers(len(SEG_STUFF), size=num)
    palettes = [_muted_colours(rng, (0.25, 0.5)) for _ in range(num)]
    canvas = np.empty((img_size, img_size, 3))
    seg_map = np.empty((img_size, img_size), np.uint8)
    for j in range(num):
        mask = region == j
        fill = _texture(rng, SEG_STUFF[stuff[j]], img_size, palettes[j])
        canvas[mask] = fill[mask]
        seg_map[mask] = stuff[j] + 1
    seg_map[_clutter(rng, canvas, ('stick', ), 2, (0.1, 0.3))] = 0
    for _ in range(rng.integers(1, 5)):
        label = rng.integers(len(SEG_THINGS))
        polygon = _random_shape(rng, SEG_THINGS[label], img_size,
                                (0.1, 0.25))[0]
        mask = rasterize(polygon, img_size)
        _paint(rng, canvas, mask, _class_colours(rng, label, len(SEG_THINGS)))
        seg_map[mask] = len(SEG_STUFF) + label + 1
    return _finish(rng, canvas), seg_map


def _save(array: np.ndarray, path: Path) -> None:
    """Save an image: JPEG (quality 90) for RGB, lossless PNG for labels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, quality=90)


def _write_text(text: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _splits(task: str, num_train: int, num_val: int, log: Optional[Callable]):
    """Yield ``(split, count)``; log each split's count and time once done."""
    for split, num in zip(SPLITS, (num_train, num_val)):
        start = time.perf_counter()
        yield split, num
        if log:
            log(f'{task}/{split}: {num} images '
                f'in {time.perf_counter() - start:.1f}s')


def _coco_annotation(instance: dict, ann_id: int, image_id: int) -> dict:
    """COCO annotation of a drawn instance: its polygon, and the tight xywh
    box and pixel area of its mask."""
    mask = instance['mask']
    xs, ys = np.flatnonzero(mask.any(0)), np.flatnonzero(mask.any(1))
    box = [xs[0], ys[0], xs[-1] + 1 - xs[0], ys[-1] + 1 - ys[0]]
    return dict(
        id=ann_id,
        image_id=image_id,
        category_id=instance['label'] + 1,
        bbox=[float(v) for v in box],
        area=int(mask.sum()),
        segmentation=[instance['polygon'].ravel().tolist()],
        iscrowd=0)


def _generate_classification(out_dir: str, classes: Sequence[str], draw: Callable,
                             stream: str, seed: int, num_train: int, num_val: int,
                             img_size: int, log: Optional[Callable]) -> dict:
    """Write ``out_dir/cls`` in mmpretrain's ImageNet layout: class folders
    ``{split}/<class>/<index>.jpg`` and ``meta/{split}.txt`` lines
    ``<class>/<index>.jpg <label>``. Labels cycle through ``classes``; image
    ``index`` is ``draw(sample_rng(seed, stream, split, index), label, img_size)``."""
    root = Path(out_dir) / 'cls'
    for split, num in _splits('cls', num_train, num_val, log):
        lines = []
        for index in range(num):
            label = index % len(classes)
            name = f'{classes[label]}/{index:06d}.jpg'
            image = draw(sample_rng(seed, stream, split, index), label, img_size)
            _save(image, root / split / name)
            lines.append(f'{name} {label}\n')
        _write_text(''.join(lines), root / 'meta' / f'{split}.txt')
    return dict(classes=classes, train=num_train, val=num_val)


def generate_cls(out_dir: str,
                 seed: int = 0,
                 num_train: int = 3000,
                 num_val: int = 200,
                 img_size: int = 64,
                 log: Optional[Callable] = None) -> dict:
    """The joint set's classification: ``CLS_CLASSES`` (:func:`draw_cls_sample`) in
    the layout of :func:`_generate_classification`."""
    return _generate_classification(out_dir, CLS_CLASSES, draw_cls_sample, 'cls', seed,
                                    num_train, num_val, img_size, log)


def generate_det(out_dir: str,
                 seed: int = 0,
                 num_train: int = 300,
                 num_val: int = 60,
                 img_size: int = 128,
                 max_instances: int = 4,
                 log: Optional[Callable] = None) -> dict:
    """Write ``out_dir/det`` in COCO's layout: ``{split}/<index>.jpg`` and
    ``annotations/instances_{split}.json`` with polygon masks, tight xywh
    boxes of the masks, their pixel areas and category ids from 1."""
    root = Path(out_dir) / 'det'
    categories = [
        dict(id=i + 1, name=name, supercategory='shape')
        for i, name in enumerate(DET_CLASSES)
    ]
    summary = dict(classes=DET_CLASSES)
    for split, num in _splits('det', num_train, num_val, log):
        images, annotations = [], []
        for index in range(num):
            image, instances = draw_det_sample(
                sample_rng(seed, 'det', split, index), img_size, max_instances)
            file_name = f'{index:06d}.jpg'
            _save(image, root / split / file_name)
            images.append(
                dict(
                    id=index + 1,
                    file_name=file_name,
                    width=img_size,
                    height=img_size))
            for instance in instances:
                annotations.append(
                    _coco_annotation(instance,
                                     len(annotations) + 1, index + 1))
        coco = dict(
            images=images, annotations=annotations, categories=categories)
        _write_text(
            json.dumps(coco), root / 'annotations' / f'instances_{split}.json')
        summary[split] = num
        summary[f'{split}_instances'] = len(annotations)
    return summary


def generate_seg(out_dir: str,
                 seed: int = 0,
                 num_train: int = 300,
                 num_val: int = 60,
                 img_size: int = 128,
                 log: Optional[Callable] = None) -> dict:
    """Write ``out_dir/seg`` in ADE20K's layout: ``images/{training,
    validation}/<index>.jpg`` and ``annotations/.../<index>.png`` label maps
    where 0 is other and ``SEG_CLASSES[i]`` is stored as i + 1 (read them
    with ``reduce_zero_label=True``)."""
    root = Path(out_dir) / 'seg'
    for split, num in _splits('seg', num_train, num_val, log):
        for index in range(num):
            image, seg_map = draw_seg_sample(
                sample_rng(seed, 'seg', split, index), img_size)
            name = f'{SEG_SPLIT_DIRS[split]}/{index:06d}'
            _save(image, root / 'images' / f'{name}.jpg')
            _save(seg_map, root / 'annotations' / f'{name}.png')
    return dict(classes=SEG_CLASSES, train=num_train, val=num_val)


def generate_downstream_cls(out_dir: str,
                            seed: int = 0,
                            num_train: int = 3000,
                            num_val: int = 600,
                            img_size: int = 64,
                            log: Optional[Callable] = None) -> dict:
    """The downstream set: ``DOWNSTREAM_CLASSES`` (:func:`draw_downstream_sample`) in
    the layout of :func:`_generate_classification`."""
    return _generate_classification(out_dir, DOWNSTREAM_CLASSES, draw_downstream_sample,
                                    'downstream', seed, num_train, num_val, img_size,
                                    log)


GENERATORS = dict(cls=generate_cls, det=generate_det, seg=generate_seg)
#: The sets the tool makes, by ``--dataset``: task -> generator. 'synthetic' is
#: the joint training set (GENERATORS), 'downstream' a classification set of
#: classes it never shows, for fine-tuning.
DATASETS = dict(
    synthetic=GENERATORS, downstream=dict(cls=generate_downstream_cls))


def generate_all(out_dir: str,
                 seed: int = 0,
                 force: bool = False,
                 log: Optional[Callable] = None,
                 dataset: str = 'synthetic',
                 **options: dict) -> dict:
    """Generate all tasks of a set under ``out_dir`` and record them in
    ``meta.json``.

    Args:
        out_dir (str): Root of the dataset.
        seed (int): Seed of every image's generator. Defaults to 0.
        force (bool): Regenerate even if ``meta.json`` records the same
            options. Defaults to False.
        log (callable, optional): Called with one line per split.
        dataset (str): Which set (a key of ``DATASETS``). Defaults to
            'synthetic', the joint training set.
        **options: Per-task keyword arguments of the ``generate_*``
            functions, e.g. ``cls=dict(num_train=100), det=dict(img_size=96)``.

    Returns:
        dict: The content of ``meta.json``: the resolved ``options`` and a
        ``summary`` (class names and counts) per task.
    """
    if dataset not in DATASETS:
        raise ValueError(
            f'unknown dataset {dataset!r}; choose from {list(DATASETS)}')
    generators = DATASETS[dataset]
    unknown = set(options) - set(generators)
    if unknown:
        raise TypeError(
            f'unknown tasks {sorted(unknown)} of dataset {dataset!r}')
    resolved = dict(version=GENERATOR_VERSION, seed=seed)
    for task, generate in generators.items():
        bound = inspect.signature(generate).bind(out_dir, seed,
                                                 **options.get(task, {}))
        bound.apply_defaults()
        resolved[task] = {
            k: v
            for k, v in bound.arguments.items()
            if k not in ('out_dir', 'seed', 'log')
        }

    root = Path(out_dir)
    meta_file = root / 'meta.json'
    if not force and meta_file.exists():
        meta = json.loads(meta_file.read_text())
        if meta['options'] == resolved:
            if log:
                log(f'{root} is up to date (use force to regenerate)')
            return meta
    meta_file.unlink(missing_ok=True)
    summary = {}
    for task, generate in generators.items():
        shutil.rmtree(root / task, ignore_errors=True)
        summary[task] = generate(out_dir, seed, log=log, **resolved[task])
    meta = dict(options=resolved, summary=summary)
    _write_text(json.dumps(meta, indent=2), meta_file)
    return json.loads(meta_file.read_text())


# Flag of a ``generate_<task>`` keyword: ``--<task>-<name>``, where the name
# is looked up here or is the keyword with dashes.
FLAG_NAMES = dict(num_train='train', num_val='val', img_size='size')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Generate the synthetic cls/det/seg dataset, or the '
        'downstream classification set.')
    parser.add_argument('--out', default='data/synthetic', help='output root')
    parser.add_argument('--seed', type=int, default=0, help='random seed')
    parser.add_argument(
        '--dataset',
        default='synthetic',
        choices=list(DATASETS),
        help='which set: the joint training set (default) or the downstream '
        'one')
    defaults = {}  # (task, keyword) -> default of each set that has it
    for dataset, generators in DATASETS.items():
        for task, generate in generators.items():
            for key, param in inspect.signature(generate).parameters.items():
                if key not in ('out_dir', 'seed', 'log'):
                    defaults.setdefault((task, key), []).append(
                        f'{param.default} ({dataset})')
    for (task, key), values in defaults.items():
        name = FLAG_NAMES.get(key, key.replace('_', '-'))
        parser.add_argument(
            f'--{task}-{name}',
            type=int,
            metavar='N',
            dest=f'{task}.{key}',
            help=f"{key} (default: {', '.join(values)})")
    parser.add_argument(
        '--force',
        action='store_true',
        help='regenerate even if meta.json records the same options')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    options = {task: {} for task in DATASETS[args.dataset]}
    for dest, value in vars(args).items():
        if '.' in dest and value is not None:
            task, key = dest.split('.')
            if task not in options:
                raise SystemExit(
                    f'--dataset {args.dataset} has no task {task!r} '
                    f'(its tasks: {list(options)})')
            options[task][key] = value
    meta = generate_all(
        args.out, seed=args.seed, force=args.force, log=print,
        dataset=args.dataset, **options)
    for task, summary in meta['summary'].items():
        print(f"{task}: {summary['train']} train / {summary['val']} val, "
              f"{meta['options'][task]['img_size']} px, "
              f"{len(summary['classes'])} classes -> {args.out}/{task}")


if __name__ == '__main__':
    main()
