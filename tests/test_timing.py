"""Interleaved timing (with a scripted clock) and the peak memory of a step."""
import pytest
import torch

from mod_squad.timing import peak_memory_mib, saved_activations_mib, time_interleaved


def test_steps_run_interleaved_and_the_median_of_rounds_is_kept():
    calls = []
    steps = {name: (lambda name=name: calls.append(name)) for name in 'ab'}
    # one clock reading before and after each (step, round): a takes 3, 1, 2 ms
    # over the rounds, b 10, 30, 20 ms (2 runs each per round: halved)
    readings = iter([0, .006, .006, .026, .026, .028, .028, .088, .088, .092, .092, .132])
    ticks = []
    times = time_interleaved(steps, warmup=1, rounds=3, iters=2,
                             on_step=lambda: ticks.append(1),
                             clock=lambda: next(readings))
    assert calls == ['a', 'b'] + ['a', 'a', 'b', 'b'] * 3
    assert len(ticks) == len(calls)
    assert times == pytest.approx(dict(a=2., b=20.))


def test_rounds_must_be_positive():
    with pytest.raises(ValueError, match='rounds >= 1'):
        time_interleaved({}, warmup=0, rounds=0, iters=1)


def test_cpu_peak_memory_is_the_most_live_at_once():
    before = torch.empty(2**20)  # allocated before the step: not counted

    def step():
        a = torch.empty(2**18)  # 1 MiB, freed
        del a
        b, c = torch.empty(2**18), torch.empty(2**18)
        d = b + c  # 3 MiB live at once
        del b, c, d
        before.mul_(1)

    assert peak_memory_mib(step, torch.device('cpu')) == 3.


def test_saved_activations_count_each_storage_once_without_leaves():
    weight = torch.randn(256, 256, requires_grad=True)  # a parameter: not counted
    x = torch.randn(1024, 256, requires_grad=True)  # the input: not counted

    def step():
        h = x @ weight.t()  # saves x and a view of weight (leaves)
        y = h.relu()  # saves its output, 1 MiB
        (y * y).sum().backward()  # mul saves y twice: the same storage

    assert saved_activations_mib(step) == 1.
