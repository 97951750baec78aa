"""HeterogeneousDataset: stock datasets per task in one index space, tagged samples,
pipelines built in each dataset's own scope, clear errors for missing paths."""
import json

import pytest
import torch
from mmengine.dataset import BaseDataset, ConcatDataset, pseudo_collate

from mod_squad.datasets import heterogeneous_dataset
from mod_squad.datasets.heterogeneous_dataset import HeterogeneousDataset
from mod_squad.registry import DATASETS


def pack(results: dict) -> dict:
    return dict(inputs=torch.full((2, ), results['value']),
                data_samples=results['sample_idx'])


class ToyDataset(BaseDataset):
    """``size`` samples of value ``offset + i``, packed like a stock dataset."""

    def __init__(self, size: int, offset: float = 0., **kwargs):
        self.size, self.offset = size, offset
        super().__init__(metainfo=dict(offset=offset), pipeline=[pack], **kwargs)

    def load_data_list(self):
        return [dict(value=self.offset + i) for i in range(self.size)]


def toy(**sizes):
    return HeterogeneousDataset({
        task: ToyDataset(n, offset=100. * k)
        for k, (task, n) in enumerate(sizes.items())
    })


def test_tasks_share_one_index_space_in_task_order():
    dataset = toy(cls=4, det=2, seg=3)
    assert isinstance(dataset, ConcatDataset)
    assert dataset.task_names == ('cls', 'det', 'seg')
    assert len(dataset) == 9 and dataset.cumulative_sizes == [4, 6, 9]
    assert dataset.task_ranges == dict(cls=range(0, 4),
                                       det=range(4, 6),
                                       seg=range(6, 9))
    assert [dataset.task_of(i)
            for i in range(9)] == ['cls'] * 4 + ['det'] * 2 + ['seg'] * 3
    assert dataset.locate(5) == ('det', 1)
    assert dataset.get_data_info(7)['value'] == 201.
    with pytest.raises(IndexError):
        dataset.locate(9)


def test_sample_is_the_stock_sample_tagged_with_its_task():
    dataset = toy(cls=4, det=2)
    sample = dataset[5]
    assert sample['task'] == 'det' and sample['data_samples'] == 1
    assert torch.equal(sample['inputs'], torch.full((2, ), 101.))


def test_metainfo_is_per_task():
    dataset = toy(cls=1, det=1)
    assert dataset.metainfo == dict(cls=dict(offset=0.), det=dict(offset=100.))
    dataset.metainfo['cls']['offset'] = 5.
    assert dataset.metainfo['cls']['offset'] == 0.


def test_pseudo_collate_gives_one_task_name_per_sample():
    dataset = toy(cls=4, det=2)
    batch = pseudo_collate([dataset[i] for i in (0, 2, 3)])
    assert batch['task'] == ['cls'] * 3
    assert batch['data_samples'] == [0, 2, 3]


def test_lazy_init_defers_loading():
    dataset = HeterogeneousDataset(dict(cls=ToyDataset(3, lazy_init=True)),
                                   lazy_init=True)
    assert not dataset.task_datasets['cls']._fully_initialized
    assert len(dataset) == 3 and dataset.task_datasets['cls']._fully_initialized


def test_registered_and_builds_task_configs():
    dataset = DATASETS.build(
        dict(type='mod_squad.HeterogeneousDataset',
             datasets=dict(a=dict(type=ToyDataset, size=2), b=ToyDataset(1))))
    assert isinstance(dataset.task_datasets['a'], ToyDataset) and len(dataset) == 3


@pytest.mark.parametrize('datasets, error', [({}, ValueError),
                                             ([ToyDataset(1)], ValueError),
                                             (dict(cls=[1, 2]), TypeError)])
def test_bad_datasets_argument(datasets, error):
    with pytest.raises(error, match='HeterogeneousDataset'):
        HeterogeneousDataset(datasets)


def stock_datasets(root, synthetic) -> dict:
    """The synthetic train splits through the stock mmpretrain, mmdet and mmseg datasets,
    with transforms whose names exist in several toolboxes."""
    return dict(
        cls=dict(_scope_='mmpretrain',
                 type='CustomDataset',
                 data_root=f'{root}/cls',
                 ann_file='meta/train.txt',
                 data_prefix='train',
                 metainfo=dict(classes=synthetic.CLS_CLASSES),
                 pipeline=[dict(type='LoadImageFromFile'),
                           dict(type='PackInputs')]),
        det=dict(_scope_='mmdet',
                 type='CocoDataset',
                 data_root=f'{root}/det',
                 ann_file='annotations/instances_train.json',
                 data_prefix=dict(img='train/'),
                 metainfo=dict(classes=synthetic.DET_CLASSES),
                 pipeline=[
                     dict(type='LoadImageFromFile'),
                     dict(type='LoadAnnotations', with_bbox=True),
                     dict(type='Resize', scale=(96, 96), keep_ratio=True),
                     dict(type='PackDetInputs')
                 ]),
        # A prefixed type without ``_scope_``: its pipeline resolves in mmseg too.
        seg=dict(type='mmseg.ADE20KDataset',
                 data_root=f'{root}/seg',
                 data_prefix=dict(img_path='images/training',
                                  seg_map_path='annotations/training'),
                 pipeline=[
                     dict(type='LoadImageFromFile'),
                     dict(type='LoadAnnotations', reduce_zero_label=True),
                     dict(type='Resize', scale=(96, 96), keep_ratio=True),
                     dict(type='PackSegInputs')
                 ]))


def test_stock_datasets_keep_their_toolbox_pipelines(synthetic, synthetic_root):
    dataset = HeterogeneousDataset(stock_datasets(synthetic_root, synthetic))
    modules = {
        task: [type(t).__module__.split('.')[0] for t in d.pipeline.transforms]
        for task, d in dataset.task_datasets.items()
    }
    assert modules['det'][1:] == ['mmdet'] * 3 and modules['seg'][1:] == ['mmseg'] * 3
    for task, index, sample_type in (('cls', 0, 'DataSample'),
                                     ('det', 0, 'DetDataSample'), ('seg', 1,
                                                                   'SegDataSample')):
        sample = dataset[dataset.task_ranges[task][index]]
        assert sample['task'] == task
        assert type(sample['data_samples']).__name__ == sample_type
    assert dataset.metainfo['det']['classes'] == synthetic.DET_CLASSES


@pytest.mark.parametrize('task, key, value, shown', [
    ('det', 'data_root', 'missing', '{root}/missing'),
    ('det', 'ann_file', 'annotations/missing.json',
     '{root}/det/annotations/missing.json'),
    ('seg', 'data_prefix', dict(img_path='images/training',
                                seg_map_path='nope'), '{root}/seg/nope'),
    ('cls', 'data_prefix', 'nope', '{root}/cls/nope'),
])
def test_missing_path_names_the_task_and_the_path(synthetic, synthetic_root, task, key,
                                                  value, shown):
    cfgs = stock_datasets(synthetic_root, synthetic)
    cfgs[task][key] = f'{synthetic_root}/{value}' if key == 'data_root' else value
    with pytest.raises(FileNotFoundError) as error:
        HeterogeneousDataset(cfgs)
    message = str(error.value)
    assert f"task '{task}'" in message and shown.format(root=synthetic_root) in message


def write_coco(path, coco: dict):
    path.write_text(json.dumps(coco))
    return str(path)


@pytest.fixture
def empty_sources(synthetic_root, tmp_path) -> dict:
    """Case -> (task, config update that leaves it without samples, message)."""
    coco = json.loads((synthetic_root / 'det/annotations/instances_train.json').read_text())
    no_images = write_coco(tmp_path / 'no_images.json',
                           dict(coco, images=[], annotations=[]))
    no_annotations = write_coco(tmp_path / 'no_annotations.json',
                                dict(coco, annotations=[]))
    return {
        'coco json without images':
        ('det', dict(ann_file=no_images),
         f"CocoDataset found no samples in ann_file '{no_images}'"),
        'coco json without annotations, filtered':
        ('det', dict(ann_file=no_annotations, filter_cfg=dict(filter_empty_gt=True)),
         f"CocoDataset found no samples in ann_file '{no_annotations}' "
         "(after filter_cfg={'filter_empty_gt': True})"),
        'image folder without images':
        ('seg', dict(data_prefix=dict(img_path=str(tmp_path), seg_map_path=str(tmp_path))),
         f"ADE20KDataset found no samples in data_prefix {{'img_path': '{tmp_path}', "
         f"'seg_map_path': '{tmp_path}'}}"),
    }


@pytest.mark.parametrize('case', [
    'coco json without images', 'coco json without annotations, filtered',
    'image folder without images'
])
def test_empty_task_dataset_names_the_task_and_the_file(synthetic, synthetic_root,
                                                        empty_sources, case):
    task, update, shown = empty_sources[case]
    cfgs = stock_datasets(synthetic_root, synthetic)
    cfgs[task].update(update)
    with pytest.raises(ValueError) as error:
        HeterogeneousDataset(cfgs)
    assert str(error.value) == (f"HeterogeneousDataset: task '{task}': {shown}; fix the "
                                'annotations, or leave the task out of the dataset')


@pytest.mark.parametrize('serialize_data', [True, False])
def test_empty_prebuilt_dataset_is_rejected(serialize_data):
    with pytest.raises(ValueError, match="task 'det': ToyDataset found no samples"):
        HeterogeneousDataset(dict(cls=ToyDataset(2),
                                  det=ToyDataset(0, serialize_data=serialize_data,
                                                 lazy_init=True)))


def test_empty_ann_file_is_rejected_before_loading(synthetic, synthetic_root, tmp_path):
    cfgs = stock_datasets(synthetic_root, synthetic)
    (tmp_path / 'empty.txt').touch()
    cfgs['cls']['ann_file'] = str(tmp_path / 'empty.txt')
    with pytest.raises(ValueError, match=(
            f"^HeterogeneousDataset: task 'cls': ann_file '{tmp_path}/empty.txt' is "
            r'empty \(0 bytes\)$')):
        HeterogeneousDataset(cfgs)


def test_annotations_of_unknown_categories_are_warned_about_once(
        synthetic, synthetic_root, tmp_path, monkeypatch):
    logs = []
    monkeypatch.setattr(heterogeneous_dataset, 'print_log',
                        lambda msg, **_: logs.append(msg))
    coco = json.loads((synthetic_root / 'det/annotations/instances_train.json').read_text())
    for annotation, category_id in zip(coco['annotations'], (7, 9, 7)):
        annotation['category_id'] = category_id
    cfgs = stock_datasets(synthetic_root, synthetic)
    cfgs['det']['ann_file'] = write_coco(tmp_path / 'unknown.json', coco)

    dataset = HeterogeneousDataset(cfgs, lazy_init=True)
    assert logs == []  # nothing loaded yet
    num_instances = sum(
        len(dataset.get_data_info(i)['instances']) for i in dataset.task_ranges['det'])
    dataset.full_init()
    assert num_instances == len(coco['annotations']) - 3
    assert logs == [
        "HeterogeneousDataset: task 'det': CocoDataset drops 3 annotations in ann_file "
        f"'{tmp_path}/unknown.json' whose category ids [7, 9] are not among the ids of "
        f"its {len(synthetic.DET_CLASSES)} classes; add those categories' names to "
        '`metainfo.classes` to train on them'
    ]
