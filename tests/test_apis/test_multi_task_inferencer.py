"""MultiTaskInferencer: every task's prediction and pictures for one image."""
import json
import os.path as osp

import mmcv
import numpy as np
import pytest
import torch
from mmdet.structures import DetDataSample
from mmengine.structures import InstanceData, PixelData
from mmpretrain.structures import DataSample
from mmseg.structures import SegDataSample

from mod_squad.apis import MultiTaskInferencer, load_image, pred_to_dict

TYPES = dict(cls=DataSample, det=DetDataSample, seg=SegDataSample)


@pytest.fixture(scope='module')
def inferencer(demo_checkpoint):
    cfg, checkpoint = demo_checkpoint
    return MultiTaskInferencer(cfg, checkpoint, device='cpu', show_progress=False)


def test_every_task_predicts_toolbox_samples_and_pictures(inferencer, image_file,
                                                          tmp_path):
    result = inferencer(image_file, out_dir=str(tmp_path), return_datasamples=True)
    (samples,) = result['predictions']
    assert {task: type(s) for task, s in samples.items()} == TYPES
    assert samples['seg'].pred_sem_seg.shape == (96, 128)  # the original size
    assert samples['det'].ori_shape == (96, 128)
    for name in ('shapes', 'shapes_cls', 'shapes_det', 'shapes_seg'):
        picture = mmcv.imread(str(tmp_path / 'vis' / f'{name}.png'))
        assert picture is not None and picture.shape == (96, 128, 3), name
    vis = result['visualization'][0]
    assert set(vis) == {'cls', 'det', 'seg', 'all'}
    # The composite holds the segmentation overlay and the class text: it differs
    # from the class picture alone and from the segmentation picture alone.
    assert not np.array_equal(vis['all'], vis['cls'])
    assert not np.array_equal(vis['all'], vis['seg'])


def test_json_predictions_match_the_samples(inferencer, image_file, tmp_path):
    image = mmcv.imread(image_file)
    dicts = inferencer(image, out_dir=str(tmp_path))['predictions'][0]
    samples = inferencer(image, return_datasamples=True)['predictions'][0]
    with open(tmp_path / 'preds' / '00000000.json') as f:
        assert json.load(f) == json.loads(json.dumps(dicts))
    assert dicts['cls']['pred_label'] == int(samples['cls'].pred_label[0])
    assert dicts['cls']['pred_class'] == inferencer.dataset_meta['cls']['classes'][
        dicts['cls']['pred_label']]
    assert np.array_equal(np.array(dicts['seg']['sem_seg']),
                          samples['seg'].pred_sem_seg.data[0].numpy())
    assert len(dicts['det']['bboxes']) == len(samples['det'].pred_instances)


def test_a_folder_and_a_subset_of_tasks(demo_checkpoint, image_file):
    cfg, checkpoint = demo_checkpoint
    only_det = MultiTaskInferencer(cfg, checkpoint, device='cpu', tasks=['det'],
                                   show_progress=False)
    result = only_det(osp.dirname(image_file), draw_pred=False)
    assert list(result['predictions'][0]) == ['det']
    assert result['visualization'] is None


def test_unknown_task_and_unreadable_image(demo_checkpoint, tmp_path):
    cfg, checkpoint = demo_checkpoint
    with pytest.raises(ValueError, match=r"Unknown tasks \['depth'\]"):
        MultiTaskInferencer(cfg, checkpoint, device='cpu', tasks=['depth'])
    with pytest.raises(FileNotFoundError, match='missing.jpg'):
        load_image(str(tmp_path / 'missing.jpg'))


def test_class_names_from_the_config_without_checkpoint(demo_checkpoint):
    cfg, _ = demo_checkpoint
    with pytest.warns(UserWarning, match='No checkpoint'):
        untrained = MultiTaskInferencer(cfg, None, device='cpu', tasks=['seg', 'cls'])
    assert untrained.dataset_meta['cls']['classes'][0] == 'arrow'
    assert len(untrained.dataset_meta['seg']['palette']) == 9  # mmseg's, from classes


def test_pred_to_dict_by_hand():
    det = DetDataSample(pred_instances=InstanceData(
        labels=torch.tensor([1]), scores=torch.tensor([0.5]),
        bboxes=torch.tensor([[1., 2., 3., 4.]])))
    assert pred_to_dict(det, ('a', 'b')) == dict(
        labels=[1], class_names=['b'], scores=[0.5], bboxes=[[1., 2., 3., 4.]])
    seg = SegDataSample(pred_sem_seg=PixelData(data=torch.tensor([[[0, 2]]])))
    assert pred_to_dict(seg) == dict(sem_seg=[[0, 2]])
    cls = DataSample().set_pred_score(torch.tensor([0.25, 0.75])).set_pred_label(1)
    assert pred_to_dict(cls, ('x', 'y')) == dict(
        pred_label=1, pred_class='y', pred_score=0.75, pred_scores=[0.25, 0.75])
    with pytest.raises(TypeError, match='No prediction'):
        pred_to_dict(DataSample())
