"""tools/test.py: evaluating a checkpoint or the initialised (untrained) model."""
import pytest
import torch
from mmengine.registry import init_default_scope

from mod_squad.registry import MODELS


@pytest.fixture(scope='module')
def tool(load_script):
    return load_script('tools/test.py')


@pytest.mark.parametrize('argv', [[], ['ckpt.pth', '--untrained']])
def test_needs_a_checkpoint_or_untrained(tool, argv, capsys):
    with pytest.raises(SystemExit):
        tool.parse_args(['config.py', *argv])
    assert 'give a checkpoint, or --untrained' in capsys.readouterr().err


def test_untrained_evaluates_the_seeded_initialisation(tool, demo_cfg, synthetic,
                                                       tmp_path):
    demo_cfg.test_dataloader.cls.update(num_workers=0, persistent_workers=False)
    config = tmp_path / 'demo.py'
    demo_cfg.dump(config)

    def evaluate(*argv):
        return tool.main([str(config), *argv, '--task', 'cls', '--work-dir',
                          str(tmp_path)])

    untrained = evaluate('--untrained')
    assert set(untrained) == {'cls/accuracy/top1', 'cls/accuracy/top5'}
    assert evaluate('--untrained') == untrained  # the same seeded weights

    # A checkpoint whose classifier always says class 3: top-1 = its share of val.
    init_default_scope('mod_squad')
    model = MODELS.build(demo_cfg.model)
    head = model.branches['cls'].head.fc
    head.weight.data.zero_()
    num_classes = len(synthetic.CLS_CLASSES)
    head.bias.data.copy_(torch.nn.functional.one_hot(torch.tensor(3), num_classes))
    checkpoint = tmp_path / 'class3.pth'
    torch.save(dict(state_dict=model.state_dict()), checkpoint)
    assert evaluate(str(checkpoint))['cls/accuracy/top1'] == pytest.approx(
        100 / num_classes)


def test_out_and_show_dir(tool, demo_cfg, tmp_path):
    import glob

    from mmengine.fileio import load
    for task in ('cls', 'seg'):
        demo_cfg.test_dataloader[task].update(num_workers=0, persistent_workers=False)
    config = tmp_path / 'demo.py'
    demo_cfg.dump(config)
    tool.main([str(config), '--untrained', '--task', 'cls', 'seg', '--work-dir',
               str(tmp_path), '--out', str(tmp_path / 'preds.pkl'), '--show-dir',
               str(tmp_path / 'show')])
    for task in ('cls', 'seg'):
        preds = load(tmp_path / f'preds_{task}.pkl')  # our own file: unpickling is safe
        assert len(preds) == len(glob.glob(str(tmp_path / 'show' / task / '**' / '*.png'),
                                          recursive=True)) > 0, task
    assert 'pred_label' in preds[0] or 'pred_sem_seg' in preds[0]
    assert not (tmp_path / 'preds_det.pkl').exists()
