"""Every task's prediction for an image, from one multi-task model."""
import copy
import os.path as osp
import warnings
from typing import Dict, List, Optional, Sequence, Union

import mmcv
import numpy as np
import torch
from mmengine.dataset import Compose, pseudo_collate
from mmengine.fileio import dump
from mmengine.infer import BaseInferencer
from mmengine.registry import DATASETS, TRANSFORMS, VISUALIZERS, init_default_scope
from mmengine.runner.checkpoint import _load_checkpoint, _load_checkpoint_to_model
from mmengine.structures import BaseDataElement, PixelData
from mmengine.visualization import Visualizer

from mod_squad.analysis import build_model
from mod_squad.engine.toolbox_visualization import task_toolboxes, toolbox_settings
from mod_squad.registry import INFERENCERS

#: Transforms of a test pipeline that inference skips: the image is loaded once for
#: all tasks, and there are no annotations.
SKIPPED_TRANSFORMS = ('LoadImageFromFile', 'LoadAnnotations')
#: Drawing order of the composite picture: areas, then boxes, then the class text.
DRAW_ORDER = ('mmseg', 'mmdet', 'mmpretrain')


def load_image(image: Union[str, np.ndarray]) -> dict:
    """A path or a (H, W, 3) BGR array -> the results dict a test pipeline expects
    after its ``LoadImageFromFile`` (mmcv's BGR image, ``img_path`` None for an
    array)."""
    if isinstance(image, str):
        img = mmcv.imread(image)
        if img is None:
            raise FileNotFoundError(f'Cannot read image {image!r}.')
    elif isinstance(image, np.ndarray) and image.ndim == 3:
        img, image = image, None
    else:
        raise TypeError(f'An image is a path or a (H, W, 3) array, got {type(image)}.')
    return dict(img=img, img_path=image, img_shape=img.shape[:2],
                ori_shape=img.shape[:2])


def _draw(scope: str, visualizer: Visualizer, image: np.ndarray,
          sample: BaseDataElement, pred_score_thr: float) -> np.ndarray:
    """``image`` (H, W, 3) RGB with ``sample``'s prediction, drawn by the
    toolbox's visualizer."""
    if scope == 'mmpretrain':
        return visualizer.visualize_cls(image, sample, draw_gt=False)
    kwargs = dict(pred_score_thr=pred_score_thr) if scope == 'mmdet' else {}
    visualizer.add_datasample('pred', image, sample, draw_gt=False, **kwargs)
    return visualizer.get_image()


def rescale_pred(sample: BaseDataElement, scale: float) -> BaseDataElement:
    """A copy of ``sample`` whose boxes and segmentation map fit the image
    rescaled by ``scale`` (to draw legibly on small images)."""
    if scale == 1:
        return sample
    sample = sample.clone()
    if 'pred_instances' in sample:
        sample.pred_instances.bboxes = sample.pred_instances.bboxes * scale
    if 'pred_sem_seg' in sample:
        seg = sample.pred_sem_seg.data[0].cpu().numpy().astype(np.uint8)
        seg = mmcv.imrescale(seg, scale, interpolation='nearest')
        sample.pred_sem_seg = PixelData(data=torch.from_numpy(seg)[None])
    return sample


def pred_to_dict(sample: BaseDataElement, classes: Sequence[str] = ()) -> dict:
    """A JSON-able dict of a toolbox data sample's prediction: ``labels``,
    ``scores``, ``bboxes`` (x1, y1, x2, y2) for boxes; ``sem_seg`` (H, W) for
    segmentation; ``pred_label``, ``pred_score``, ``pred_scores`` for a class; and
    ``pred_class`` / ``class_names`` when ``classes`` are known."""
    def name(label: int) -> Optional[str]:
        return classes[label] if label < len(classes) else None

    if 'pred_instances' in sample:
        instances = sample.pred_instances
        labels = instances.labels.tolist()
        return dict(labels=labels, class_names=[name(i) for i in labels],
                    scores=instances.scores.tolist(),
                    bboxes=instances.bboxes.tolist())
    if 'pred_sem_seg' in sample:
        return dict(sem_seg=sample.pred_sem_seg.data[0].tolist())
    if 'pred_label' in sample:
        label = int(sample.pred_label[0])
        return dict(pred_label=label, pred_class=name(label),
                    pred_score=float(sample.pred_score[label]),
                    pred_scores=sample.pred_score.tolist())
    raise TypeError(f'No prediction in {type(sample).__name__} with fields '
                    f'{sorted(sample.keys())}.')


@INFERENCERS.register_module()
class MultiTaskInferencer(BaseInferencer):
    """Run every task of a :class:`~mod_squad.models.ModSquadMultiTaskModel` on
    each image, as ``DetInferencer`` / ``MMSegInferencer`` do for one task::

        inferencer = MultiTaskInferencer(config, checkpoint, device='cpu')
        result = inferencer('demo.jpg', out_dir='outputs')
        result['predictions'][0]['det']  # {'labels': ..., 'scores': ..., 'bboxes': ...}

    Each task's input goes through that task's test pipeline (its
    ``test_dataloader[task].dataset.pipeline``, built in the branch's toolbox
    scope) without ``LoadImageFromFile`` (the image is loaded once) and
    ``LoadAnnotations``; each task's prediction is drawn by its toolbox's
    visualizer (:data:`~mod_squad.engine.toolbox_visualization.TOOLBOX_VISUALIZATION`
    or the config's ``MultiTaskVisualizationHook`` visualizers), alone
    (``vis/<name>_<task>.png``) and all together on one picture
    (``vis/<name>.png``: segmentation, then boxes, then the class). Class names
    come from the checkpoint's ``dataset_meta`` (as mmdet's), else from the
    config's test datasets.

    Args:
        model (str | Config): The multi-task config.
        weights (str, optional): Checkpoint; None runs the initialised model.
        device (str, optional): Defaults to CUDA when available.
        tasks (Sequence[str], optional): Run only these tasks (default: all).
        show_progress (bool): Progress bar over the batches. Defaults to True.
    """
    visualize_kwargs = {'show', 'wait_time', 'draw_pred', 'pred_score_thr',
                        'img_out_dir', 'vis_scale'}
    postprocess_kwargs = {'pred_out_dir'}

    def __init__(self, model, weights: Optional[str] = None,
                 device: Optional[str] = None,
                 tasks: Optional[Sequence[str]] = None,
                 show_progress: bool = True) -> None:
        self._requested_tasks = tasks
        init_default_scope('mod_squad')
        super().__init__(model, weights, device, scope='mod_squad',
                         show_progress=show_progress)

    # --- construction (called by BaseInferencer.__init__) -----------------------
    def _init_model(self, cfg, weights: Optional[str], device: str = 'cpu'):
        model = build_model(cfg)
        toolboxes = task_toolboxes(cfg)
        tasks = list(self._requested_tasks or toolboxes)
        unknown = [task for task in tasks if task not in toolboxes]
        if unknown:
            raise ValueError(f'Unknown tasks {unknown}; the model has tasks '
                             f'{list(toolboxes)}.')
        self.toolboxes = {task: toolboxes[task] for task in tasks}
        dataset_meta = None
        if weights is None:
            warnings.warn('No checkpoint: predicting with the initialised model.')
        else:
            checkpoint = _load_checkpoint(weights, map_location='cpu')
            _load_checkpoint_to_model(model, checkpoint, strict=True)
            dataset_meta = checkpoint.get('meta', {}).get('dataset_meta')
        self.dataset_meta = {
            task: (dataset_meta or {}).get(task) or self._config_meta(cfg, task)
            for task in tasks
        }
        return model.to(device).eval()

    def _config_meta(self, cfg, task: str) -> dict:
        """The metainfo of ``task``'s test dataset (built lazily: no files read)."""
        dataset = copy.deepcopy(cfg.test_dataloader[task].dataset)
        dataset.update(lazy_init=True, pipeline=[])
        return DATASETS.build(dataset).metainfo

    def _init_pipeline(self, cfg) -> Dict[str, Compose]:
        pipelines = {}
        for task, scope in self.toolboxes.items():
            steps = [t for t in cfg.test_dataloader[task].dataset.pipeline
                     if t['type'].split('.')[-1] not in SKIPPED_TRANSFORMS]
            with TRANSFORMS.switch_scope_and_registry(scope) as registry:
                pipelines[task] = Compose([registry.build(t) for t in steps])
        return pipelines

    def _init_collate(self, cfg):
        """Every toolbox's data preprocessor takes pseudo-collated lists."""
        return pseudo_collate

    def _init_visualizer(self, cfg) -> Dict[str, Visualizer]:
        configured = {}
        for hook in cfg.get('custom_hooks', []):
            if hook['type'].split('.')[-1] == 'MultiTaskVisualizationHook':
                configured = hook['visualizers']
        visualizers = {}
        for task, scope in self.toolboxes.items():
            vis_cfg = dict(configured.get(task) or dict(
                toolbox_settings(scope)['visualizer'], _scope_=scope))
            vis_cfg.update(name=f'{type(self).__name__}_{id(self)}_{task}',
                           vis_backends=None, save_dir=None)
            visualizer = VISUALIZERS.build(vis_cfg)
            meta = self.dataset_meta[task]
            if scope == 'mmseg':
                visualizer.set_dataset_meta(meta.get('classes'), meta.get('palette'))
            else:
                visualizer.dataset_meta = meta
            visualizers[task] = visualizer
        return visualizers

    # --- inference ----------------------------------------------------------------
    def __call__(self, inputs, return_datasamples: bool = False,
                 batch_size: int = 1, out_dir: str = '', **kwargs) -> dict:
        """Predict every task on ``inputs`` (a path, an array, a folder or a list
        of them); with ``out_dir``, write ``out_dir/vis/*.png`` and
        ``out_dir/preds/*.json``.

        Returns:
            dict: ``predictions``, one ``{task: dict or data sample}`` per image,
            and ``visualization``, one ``{task: (H, W, 3) RGB, 'all': ...}`` per
            image.
        """
        if out_dir:
            kwargs.setdefault('img_out_dir', osp.join(out_dir, 'vis'))
            kwargs.setdefault('pred_out_dir', osp.join(out_dir, 'preds'))
        return super().__call__(inputs, return_datasamples, batch_size, **kwargs)

    def _inputs_to_list(self, inputs) -> list:
        inputs = super()._inputs_to_list(inputs)
        self._names = [  # of the output files
            osp.splitext(osp.basename(image))[0] if isinstance(image, str)
            else f'{index:08d}' for index, image in enumerate(inputs)]
        return inputs

    def preprocess(self, inputs: list, batch_size: int = 1, **kwargs):
        """Yields ``{task: pseudo-collated batch}`` per chunk of ``batch_size``
        images."""
        for chunk in self._get_chunk_data(map(load_image, inputs), batch_size):
            yield {task: self.collate_fn([pipeline(dict(item)) for item in chunk])
                   for task, pipeline in self.pipeline.items()}

    @torch.no_grad()
    def forward(self, inputs: Dict[str, dict], **kwargs) -> List[dict]:
        """``{task: batch}`` -> one ``{task: data sample}`` per image."""
        preds = {task: self.model.test_step(dict(batch, task=task))
                 for task, batch in inputs.items()}
        return [dict(zip(preds, samples)) for samples in zip(*preds.values())]

    def visualize(self, inputs: list, preds: List[dict], show: bool = False,
                  wait_time: float = 0, draw_pred: bool = True,
                  pred_score_thr: float = 0.3,
                  img_out_dir: str = '',
                  vis_scale: float = 1.) -> Optional[List[dict]]:
        """Draw each task's prediction alone and all of them on one picture, on
        the image rescaled by ``vis_scale``."""
        if not draw_pred:
            return None
        order = sorted(self.toolboxes, key=lambda t: DRAW_ORDER.index(self.toolboxes[t]))
        results = []
        for name, image, pred in zip(self._names, inputs, preds):
            rgb = mmcv.imrescale(mmcv.bgr2rgb(load_image(image)['img']), vis_scale)
            pred = {task: rescale_pred(sample, vis_scale) for task, sample in pred.items()}
            drawn, composite = {}, rgb
            for task in order:
                scope, visualizer = self.toolboxes[task], self.visualizer[task]
                drawn[task] = _draw(scope, visualizer, rgb, pred[task], pred_score_thr)
                composite = _draw(scope, visualizer, composite, pred[task],
                                  pred_score_thr)
            drawn['all'] = composite
            for key, picture in drawn.items():
                if show:
                    self.visualizer[order[-1]].show(picture, f'{name}_{key}',
                                                    wait_time=wait_time)
                if img_out_dir:
                    suffix = '' if key == 'all' else f'_{key}'
                    mmcv.imwrite(mmcv.rgb2bgr(picture),
                                 osp.join(img_out_dir, f'{name}{suffix}.png'))
            results.append(drawn)
        return results

    def postprocess(self, preds: List[dict], visualization: Optional[List[dict]],
                    return_datasample: bool = False, pred_out_dir: str = '') -> dict:
        """Data samples, or JSON-able dicts (written to ``pred_out_dir/<name>.json``
        when given)."""
        if not return_datasample:
            preds = [{task: pred_to_dict(sample, self.dataset_meta[task].get(
                'classes') or ()) for task, sample in pred.items()} for pred in preds]
            if pred_out_dir:
                for name, pred in zip(self._names, preds):
                    dump(pred, osp.join(pred_out_dir, f'{name}.json'))
        return dict(predictions=preds, visualization=visualization)
