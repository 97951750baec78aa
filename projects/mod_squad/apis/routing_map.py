"""Which expert each image patch goes to: top-1 routing at one layer, per task,
overlaid on the image."""
from typing import Dict, NamedTuple, Tuple, Union

import matplotlib
import mmcv
import numpy as np
import torch
import torch.nn as nn
from mmengine.visualization import Visualizer


class RoutingRecord(NamedTuple):
    """top1: (B, h, w) expert of each patch; input_hw: (H, W) of the images."""
    top1: torch.Tensor
    input_hw: Tuple[int, int]


class RoutingRecorder:
    """While active, record the top-1 expert of every patch token at one routed
    layer (``'layers.<i>.attn'`` or ``'layers.<i>.ffn'``) of a ModSquadViT:
    :attr:`records` maps each task to the :class:`RoutingRecord` of its last
    forward (extra tokens such as the class token dropped)::

        with RoutingRecorder(model.backbone, 'layers.1.ffn') as recorder:
            inferencer(image)
        recorder.records['det'].top1  # (B, h, w)
    """

    def __init__(self, backbone: nn.Module, layer: str):
        layers = backbone.routed_layers()
        if layer not in layers:
            raise KeyError(f'No routed layer {layer!r}; the backbone has '
                           f'{list(layers)}.')
        self.backbone, self.layer = backbone, layers[layer]
        self.records: Dict[str, RoutingRecord] = {}
        self._grid = None

    def __enter__(self) -> 'RoutingRecorder':
        self._handles = [
            self.backbone.patch_embed.register_forward_hook(self._record_grid),
            self.layer.router.register_forward_hook(self._record_route)]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()

    def _record_grid(self, module, args, output) -> None:
        self._grid = (tuple(args[0].shape[-2:]), tuple(output[1]))

    def _record_route(self, module, args, output) -> None:
        input_hw, (h, w) = self._grid
        extra = self.backbone.num_extra_tokens
        top1 = output.indices[:, 0].reshape(-1, extra + h * w)[:, extra:]
        self.records[args[1]] = RoutingRecord(top1.reshape(-1, h, w).cpu(), input_hw)


def patches_to_image(record: RoutingRecord, index: int, img_shape: Tuple[int, int],
                     ori_shape: Tuple[int, int]) -> np.ndarray:
    """The (h, w) patch map of image ``index`` -> (H0, W0) at the original image's
    size: each patch covers its pixels of the model input, whose padding is cut
    off (``img_shape``: the resized image before padding) before resizing back
    to ``ori_shape``."""
    grid = record.top1[index].numpy()
    (H, W), (h, w) = record.input_hw, grid.shape
    pixels = grid.repeat(-(-H // h), 0).repeat(-(-W // w), 1)
    pixels = pixels[:img_shape[0], :img_shape[1]].astype(np.uint8)
    return mmcv.imresize(pixels, (ori_shape[1], ori_shape[0]), interpolation='nearest')


def routing_maps(inferencer, image: Union[str, np.ndarray],
                 layer: str) -> Dict[str, np.ndarray]:
    """Task -> (H0, W0) top-1 expert of each pixel's patch at ``layer``, for one
    image run through each task's own test pipeline by a
    :class:`~mod_squad.apis.MultiTaskInferencer`."""
    with RoutingRecorder(inferencer.model.backbone, layer) as recorder:
        result = inferencer(image, return_datasamples=True, draw_pred=False)
    return {
        task: patches_to_image(recorder.records[task], 0, sample.img_shape,
                               sample.ori_shape)
        for task, sample in result['predictions'][0].items()
    }


def expert_palette(num_experts: int) -> list:
    """One distinct RGB colour per expert (tab20, or hsv beyond 20 experts)."""
    cmap = matplotlib.colormaps['tab20' if num_experts <= 20 else 'hsv']
    return [tuple(int(255 * c) for c in cmap(e % cmap.N)[:3]) for e in range(num_experts)]


def draw_routing_map(image: np.ndarray, maps: Dict[str, np.ndarray],
                     num_experts: int, title: str = '', size: int = 256,
                     alpha: float = 0.55) -> np.ndarray:
    """Side by side, one panel per task: ``image`` (H0, W0, 3) RGB with each
    pixel tinted by the colour of its expert in ``maps[task]`` (H0, W0), the task
    name on top, and a legend of the experts below. Panels are rescaled to a
    shorter side of ``size``. Returns the (H', W', 3) RGB picture."""
    palette = expert_palette(num_experts)
    scale = size / min(image.shape[:2])
    base = mmcv.imrescale(image, scale)
    visualizer = Visualizer()
    panels = []
    for task, experts in maps.items():
        experts = mmcv.imresize(experts, base.shape[1::-1], interpolation='nearest')
        visualizer.set_image(base)
        used = np.unique(experts)
        visualizer.draw_binary_masks(np.stack([experts == e for e in used]),
                                     colors=[palette[e] for e in used], alphas=alpha)
        visualizer.draw_texts(f'{title} {task}'.strip(), np.array([4, 4]),
                              colors='white', font_sizes=12,
                              bboxes=dict(facecolor='black', alpha=0.6))
        panels.append(visualizer.get_image())
        panels.append(np.full((base.shape[0], 4, 3), 255, np.uint8))
    row = np.concatenate(panels[:-1], axis=1)
    return np.concatenate([row, _legend(palette, row.shape[1])], axis=0)


def _legend(palette: list, width: int, cell: int = 18) -> np.ndarray:
    """A white strip with one coloured square and name per expert."""
    per_row = max(1, width // (3 * cell + 8))
    rows = -(-len(palette) // per_row)
    visualizer = Visualizer(image=np.full((rows * (cell + 6) + 6, width, 3), 255,
                                          np.uint8))
    for e, colour in enumerate(palette):
        x = 4 + (e % per_row) * (3 * cell + 8)
        y = 4 + (e // per_row) * (cell + 6)
        visualizer.draw_bboxes(np.array([x, y, x + cell, y + cell]),
                               edge_colors=colour, face_colors=colour, alpha=1.0)
        visualizer.draw_texts(f'e{e}', np.array([x + cell + 3, y + 2]),
                              colors='black', font_sizes=10)
    return visualizer.get_image()
