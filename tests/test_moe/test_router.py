"""TaskRouter: per-task routers, top-k, gates, fp32, noise, init."""
import pytest
import torch

from mod_squad.moe import RouterConfig, RouterOutput, TaskRouter
from moe_reference import GATE_EPS, naive_route, spread_router

TASKS = ('cls', 'det', 'seg')


class Wrapped(torch.nn.Module):
    """spread_router expects ``.router``."""

    def __init__(self, router):
        super().__init__()
        self.router = router


@pytest.mark.parametrize('hidden', [None, 12])
@pytest.mark.parametrize('renormalize,bias,eps', [(False, True, 1e-4), (True, True, 1e-4),
                                                  (False, False, 0.01)])
def test_routing_matches_per_token_reference(hidden, renormalize, bias, eps):
    router = TaskRouter(8, 6, 3, TASKS,
                        RouterConfig(hidden=hidden, renormalize=renormalize, bias=bias,
                                     eps=eps))
    spread_router(Wrapped(router))
    x = torch.randn(10, 8)
    out = router(x, 'det')
    assert isinstance(out, RouterOutput)
    assert out.probs.shape == (10, 6) and out.logits.shape == (10, 6)
    assert out.indices.shape == (10, 3) and out.gates.shape == (10, 3)
    for n in range(10):
        idx, gates = naive_route(router, x[n].double(), 'det')
        assert out.indices[n].tolist() == idx
        torch.testing.assert_close(out.gates[n], gates.float())
    torch.testing.assert_close(out.probs.sum(-1), torch.ones(10))
    if renormalize:
        torch.testing.assert_close(out.gates.sum(-1), torch.ones(10))
    else:
        torch.testing.assert_close(out.gates, out.probs.gather(1, out.indices) + eps)


@pytest.mark.parametrize('hidden', [None, 5])
def test_routers_without_bias_have_no_bias_parameters(hidden):
    router = TaskRouter(8, 4, 2, TASKS, RouterConfig(hidden=hidden, bias=False))
    names = {name.rsplit('.', 1)[0] for name, _ in router.named_parameters()}
    assert names == ({'weight', 'hidden_weight'} if hidden else {'weight'})


def test_tasks_use_their_own_parameters_and_only_those_get_gradients():
    router = TaskRouter(8, 4, 2, TASKS, RouterConfig(hidden=5, noisy_gating=True))
    spread_router(Wrapped(router))
    x = torch.randn(6, 8)
    router.eval()
    before = router(x, 'cls').logits.detach()
    with torch.no_grad():
        router.weight['det'].add_(1.)  # another task's router
    torch.testing.assert_close(router(x, 'cls').logits, before)
    assert not torch.allclose(router(x, 'det').logits, router(x, 'seg').logits)

    router.train()
    router(x, 'seg').gates.sum().backward()
    grads = {name: p.grad for name, p in router.named_parameters()}
    assert len(grads) == 5 * len(TASKS)  # hidden weight/bias, weight, bias, noise
    for name, grad in grads.items():
        if name.endswith('.seg'):
            assert grad is not None and torch.count_nonzero(grad) > 0, name
        else:  # None, not zeros: optimisers leave other tasks' routers alone
            assert grad is None, name


def test_unknown_task_lists_the_valid_tasks():
    router = TaskRouter(8, 4, 2, TASKS)
    with pytest.raises(ValueError, match=r"'depth'.*\['cls', 'det', 'seg'\]"):
        router(torch.randn(2, 8), 'depth')


def test_zero_init_routes_deterministically_to_the_first_experts():
    router = TaskRouter(8, 5, 2, TASKS)
    out = router(torch.randn(7, 8), 'cls')
    torch.testing.assert_close(out.probs, torch.full((7, 5), 0.2))
    assert out.indices.tolist() == [[0, 1]] * 7
    torch.testing.assert_close(out.gates, torch.full((7, 2), 0.2 + GATE_EPS))
    assert not TaskRouter(8, 5, 2, TASKS, RouterConfig(init='trunc_normal')).weight[
        'cls'].eq(0).all()


def test_trunc_normal_init_spreads_the_first_routing():
    """The authors' routers start truncated-normal (std 0.02): tokens already pick
    different experts at step 0, unlike zero routers (experts 0..k-1 for all)."""
    torch.manual_seed(0)
    router = TaskRouter(32, 8, 2, TASKS, RouterConfig(init='trunc_normal'))
    weight = router.weight['cls']
    assert abs(weight.std().item() - 0.02) < 0.003
    assert all(not b.any() for b in router.bias.values())
    out = router(torch.randn(64, 32), 'cls')
    assert len(out.indices.unique()) == 8
    assert (out.probs - 1 / 8).abs().max() < 0.1  # still close to uniform


def test_router_math_stays_fp32_under_autocast():
    router = TaskRouter(8, 4, 2, TASKS, RouterConfig(hidden=6, init='trunc_normal'))
    x = torch.randn(5, 8)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = router(x.bfloat16(), 'cls')
        assert torch.mm(x, x.T).dtype == torch.bfloat16  # autocast is on
    for t in out:
        assert t.dtype in (torch.float32, torch.long)
    assert out.probs.dtype == out.gates.dtype == out.logits.dtype == torch.float32
    torch.testing.assert_close(out.logits, router(x.bfloat16().float(), 'cls').logits)


def test_noisy_gating_only_in_training():
    router = TaskRouter(8, 4, 2, TASKS, RouterConfig(noisy_gating=True))
    x = torch.randn(64, 8)
    router.eval()
    clean = router(x, 'cls').logits
    torch.testing.assert_close(router(x, 'cls').logits, clean)
    torch.testing.assert_close(clean, torch.zeros(64, 4))  # zero init, no noise
    router.train()
    noisy_a, noisy_b = router(x, 'cls').logits, router(x, 'cls').logits
    assert not torch.allclose(noisy_a, clean) and not torch.allclose(noisy_a, noisy_b)
    # zero-initialised noise weights: std = softplus(0) + 0.01
    assert abs(noisy_a.std().item() - 0.7031) < 0.1


def test_invalid_arguments():
    with pytest.raises(ValueError, match='top_k'):
        TaskRouter(8, 4, 5, TASKS)
    with pytest.raises(ValueError, match='unique'):
        TaskRouter(8, 4, 2, ('a', 'a'))


@pytest.mark.parametrize('tasks', [(), ('cls', 'cls'), ('coco.det', )])
def test_task_names_must_be_unique_names_without_dots(tasks):
    with pytest.raises(ValueError, match='unique, non-empty names without dots'):
        TaskRouter(8, 4, 2, tasks)


# --- compute control ------------------------------------------------------------------
def test_compute_defaults_and_readers():
    router = TaskRouter(8, 6, 3, TASKS)
    assert [router.top_k_of(t) for t in TASKS] == [3, 3, 3]
    assert router.enabled_experts_of('det') == list(range(6))
    router.set_compute('det', top_k=2, enabled_experts=[4, 1, 2])
    assert (router.top_k_of('det'), router.enabled_experts_of('det')) == (2, [1, 2, 4])
    all_experts = list(range(6))
    assert (router.top_k_of('cls'), router.enabled_experts_of('cls')) == (3, all_experts)
    router.set_compute('det', enabled_experts=[0, 5])  # None: built k, capped
    assert (router.top_k_of('det'), router.enabled_experts_of('det')) == (2, [0, 5])
    router.set_compute('det')
    assert (router.top_k_of('det'), router.enabled_experts_of('det')) == (3, all_experts)
    router.set_compute('seg', top_k=6)  # more than built: up to every expert
    assert router(torch.randn(2, 8), 'seg').indices.shape == (2, 6)
    assert 'enabled_mask' not in router.state_dict()  # a setting, not a weight
    assert 'enabled_mask' in dict(router.named_buffers())  # follows .to(device)


def test_full_compute_is_bit_identical():
    router = TaskRouter(8, 6, 3, TASKS, RouterConfig(hidden=5))
    spread_router(Wrapped(router))
    x = torch.randn(20, 8)
    before = router(x, 'det')
    router.set_compute('det', top_k=3, enabled_experts=range(6))
    for got, expected in zip(router(x, 'det'), before):
        assert torch.equal(got, expected)


def test_lower_k_keeps_the_most_probable_experts():
    router = TaskRouter(8, 6, 4, TASKS)
    spread_router(Wrapped(router))
    x = torch.randn(20, 8)
    full = router(x, 'seg')
    router.set_compute('seg', top_k=2)
    low = router(x, 'seg')
    assert low.indices.shape == low.gates.shape == (20, 2)
    assert torch.equal(low.indices, full.indices[:, :2])
    assert torch.equal(low.gates, full.gates[:, :2])
    assert torch.equal(low.probs, full.probs)
    assert router(x, 'cls').indices.shape == (20, 4)  # other tasks keep theirs


@pytest.mark.parametrize('renormalize', [False, True])
def test_disabled_experts_are_never_chosen_and_probs_renormalise(renormalize):
    router = TaskRouter(8, 6, 2, TASKS, RouterConfig(renormalize=renormalize))
    spread_router(Wrapped(router))
    x = torch.randn(50, 8)
    full = router(x, 'cls')
    enabled = [1, 3, 4]
    assert not torch.isin(full.indices, torch.tensor(enabled)).all()  # a real change
    router.set_compute('cls', enabled_experts=enabled)
    out = router(x, 'cls')
    assert torch.isin(out.indices, torch.tensor(enabled)).all()
    assert out.probs[:, [0, 2, 5]].eq(0).all()
    assert torch.isinf(out.logits[:, [0, 2, 5]]).all()
    # the softmax over the enabled logits alone, i.e. a router of only those experts
    expected = full.logits[:, enabled].softmax(-1)
    torch.testing.assert_close(out.probs[:, enabled], expected)
    top = expected.sort(dim=-1, descending=True, stable=True)
    assert torch.equal(out.indices, torch.tensor(enabled)[top.indices[:, :2]])
    gates = top.values[:, :2]
    gates = gates / gates.sum(-1, keepdim=True) if renormalize else gates + GATE_EPS
    torch.testing.assert_close(out.gates, gates)


def test_enabled_experts_win_ties_with_disabled_ones():
    """An enabled expert whose probability underflows to 0 still goes before the
    disabled experts (probability 0 too) of lower index."""
    router = TaskRouter(8, 4, 2, TASKS)
    with torch.no_grad():
        router.bias['cls'][2] = float('-inf')
    router.set_compute('cls', enabled_experts=[2, 3])
    out = router(torch.randn(5, 8), 'cls')
    assert out.indices.tolist() == [[3, 2]] * 5
    assert out.probs[:, 2].eq(0).all() and out.probs[:, 3].eq(1).all()


@pytest.mark.parametrize('kwargs,message', [
    (dict(task='depth'), r"Unknown task 'depth'; valid tasks are "
     r"\['cls', 'det', 'seg'\]"),
    (dict(top_k=0), r"top_k of task 'det' must be an int in \[1, num_experts=6\], got 0"),
    (dict(top_k=7), r"top_k of task 'det' must be an int in \[1, num_experts=6\], got 7"),
    (dict(top_k=2.0), r'must be an int in \[1, num_experts=6\], got 2.0'),
    (dict(enabled_experts=[1, 6]), r"enabled_experts of task 'det' must be a non-empty "
     r'list of expert ids in \[0, 6\), got \[1, 6\]'),
    (dict(enabled_experts=[-1, 2]), r'expert ids in \[0, 6\), got \[-1, 2\]'),
    (dict(enabled_experts=[]), r'non-empty list of expert ids'),
    (dict(enabled_experts=[2, 2, 3]), r"enabled_experts of task 'det' repeat an "
     r'expert: \[2, 2, 3\]'),
    (dict(top_k=3, enabled_experts=[0, 4]), r"top_k=3 of task 'det' is larger than its "
     r'2 enabled experts \[0, 4\]'),
])
def test_compute_errors_name_the_culprit(kwargs, message):
    router = TaskRouter(8, 6, 3, TASKS)
    kwargs.setdefault('task', 'det')
    with pytest.raises(ValueError, match=message):
        router.set_compute(**kwargs)
    assert router.top_k_of('det') == 3 and router.enabled_experts_of('det') == list(
        range(6))
