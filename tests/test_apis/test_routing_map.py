"""Routing picture: top-1 expert per patch per task, overlaid side by side."""
import mmcv
import numpy as np
import pytest
import torch

from mod_squad.apis import MultiTaskInferencer, draw_routing_map, routing_maps
from mod_squad.apis.routing_map import RoutingRecord, RoutingRecorder, patches_to_image


def test_patches_cover_their_pixels_padding_cut_off():
    # 2 x 3 patches of 4 px over a (8, 12) input; the image was (6, 9) before padding
    # and (3, 9) originally (resized by 2 in height).
    record = RoutingRecord(torch.tensor([[[0, 1, 2], [3, 4, 5]]]), (8, 12))
    pixels = patches_to_image(record, 0, img_shape=(6, 9), ori_shape=(3, 9))
    assert pixels.tolist() == [[0] * 4 + [1] * 4 + [2]] * 2 + [[3] * 4 + [4] * 4 + [5]]


def test_recorder_drops_the_class_token_and_keeps_each_task(demo_checkpoint):
    cfg, checkpoint = demo_checkpoint
    model = MultiTaskInferencer(cfg, checkpoint, device='cpu').model
    backbone = model.backbone
    with pytest.raises(KeyError, match="No routed layer 'layers.9.ffn'"):
        RoutingRecorder(backbone, 'layers.9.ffn')
    x = torch.rand(2, 3, 32, 48)
    layer = backbone.routed_layers()['layers.1.ffn']
    captured = {}

    def capture(module, args, out):
        captured[args[1]] = out.indices[:, 0]

    layer.router.register_forward_hook(capture)
    with torch.no_grad(), RoutingRecorder(backbone, 'layers.1.ffn') as recorder:
        for task in ('cls', 'seg'):
            backbone(x, task)
    assert set(recorder.records) == {'cls', 'seg'}
    for task, record in recorder.records.items():
        assert record.input_hw == (32, 48) and record.top1.shape == (2, 4, 6)
        tokens = captured[task].view(2, 1 + 24)  # the class token first
        assert torch.equal(record.top1.flatten(1), tokens[:, 1:])


def test_routing_picture_side_by_side(demo_checkpoint, image_file):
    cfg, checkpoint = demo_checkpoint
    inferencer = MultiTaskInferencer(cfg, checkpoint, device='cpu', show_progress=False)
    maps = routing_maps(inferencer, image_file, 'layers.0.attn')
    assert {t: m.shape for t, m in maps.items()} == dict.fromkeys(
        ('cls', 'det', 'seg'), (96, 128))
    assert all(m.max() < 8 for m in maps.values())
    picture = draw_routing_map(mmcv.bgr2rgb(mmcv.imread(image_file)), maps, 8,
                               size=96)
    # three 96 x 128 panels with 4 px gaps above a legend strip
    assert picture.shape[1] == 3 * 128 + 2 * 4 and picture.shape[0] > 96
    assert picture.dtype == np.uint8
