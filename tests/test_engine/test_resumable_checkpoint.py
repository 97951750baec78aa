"""find_resumable_checkpoint: ``--resume`` without a path survives a broken
``last_checkpoint`` by taking the newest complete checkpoint, and says so."""
import pytest
import torch

from mod_squad.engine import resumable_checkpoint
from mod_squad.engine.resumable_checkpoint import (checkpoint_problem,
                                                   find_resumable_checkpoint)


@pytest.fixture
def logs(monkeypatch):
    messages = []
    monkeypatch.setattr(resumable_checkpoint, 'print_log',
                        lambda msg, **_: messages.append(msg))
    return messages


def save(path, iteration):
    torch.save(dict(meta=dict(iter=iteration), state_dict={}), path)
    return str(path)


@pytest.fixture
def work_dir(tmp_path):
    """``iter_2`` and ``iter_10`` complete, ``iter_12`` cut short by a kill; a best
    checkpoint and an unrelated file that are never resumed from."""
    for iteration in (2, 10):
        save(tmp_path / f'iter_{iteration}.pth', iteration)
    save(tmp_path / 'best_accuracy_iter_12.pth', 12)
    complete = (tmp_path / 'iter_10.pth').read_bytes()
    (tmp_path / 'iter_12.pth').write_bytes(complete[:len(complete) // 2])
    (tmp_path / 'notes.pth.part').write_bytes(complete)
    return tmp_path


def test_a_complete_last_checkpoint_is_used(work_dir, logs):
    (work_dir / 'last_checkpoint').write_text(f'{work_dir}/iter_2.pth\n')
    assert find_resumable_checkpoint(str(work_dir)) == f'{work_dir}/iter_2.pth'
    assert logs == []


@pytest.mark.parametrize('named, problem', [
    ('', 'it is empty'),
    ('{work_dir}/iter_14.pth', '{work_dir}/iter_14.pth does not exist'),
    ('{work_dir}/iter_12.pth',
     '{work_dir}/iter_12.pth is not a complete torch checkpoint (partly written?)'),
])
def test_a_broken_last_checkpoint_falls_back_to_the_newest_complete_one(
        work_dir, logs, named, problem):
    (work_dir / 'last_checkpoint').write_text(named.format(work_dir=work_dir))
    assert find_resumable_checkpoint(str(work_dir)) == f'{work_dir}/iter_10.pth'
    assert logs == [
        f'{work_dir}/last_checkpoint names no usable checkpoint '
        f'({problem.format(work_dir=work_dir)}); resuming from '
        f'{work_dir}/iter_10.pth, the newest complete checkpoint there.'
    ]


def test_no_complete_checkpoint_starts_a_new_run(tmp_path, logs):
    (tmp_path / 'last_checkpoint').write_text('')
    (tmp_path / 'iter_4.pth').write_bytes(b'')
    assert find_resumable_checkpoint(str(tmp_path)) is None
    assert logs == [
        f'{tmp_path}/last_checkpoint names no usable checkpoint (it is empty); no '
        'complete iter_<n>.pth / epoch_<n>.pth is there either: training starts from '
        'the beginning.'
    ]


def test_no_last_checkpoint_starts_a_new_run(work_dir, logs):
    """As in mmengine: without ``last_checkpoint`` the files are not searched."""
    assert find_resumable_checkpoint(str(work_dir)) is None
    assert logs == [f'No {work_dir}/last_checkpoint: training starts from the '
                    'beginning.']


def test_checkpoint_problem_reads_no_pickle(tmp_path):
    path = tmp_path / 'random.pth'
    path.write_bytes(b'\x80\x04not a zip archive')
    assert checkpoint_problem(str(path)) == (
        f'{path} is not a complete torch checkpoint (partly written?)')
    assert checkpoint_problem(save(tmp_path / 'whole.pth', 1)) is None
