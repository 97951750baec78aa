"""Growing a routed layer for a new task: narrowed routers compute exactly as the old
ones, new expert rows are fresh or copies, the old tasks' outputs stay bit-identical."""
import pytest
import torch

from mod_squad.moe import MoAttention, MoEMLP, RouterConfig, TaskRouter
from mod_squad.moe.growth import grow_layer_state, most_used_experts, narrow_router

C, E, M, K = 16, 6, 2, 2
CFG = RouterConfig(init='trunc_normal', aux_loss=dict(mi_weight=0.01))


def grown_router():
    """A router of E experts for 'a' and its grown copy (E + M, new task 'n')."""
    torch.manual_seed(0)
    old = TaskRouter(C, E, K, ['a'], CFG)
    new = TaskRouter(C, E + M, K, ['a', 'n'], CFG)
    narrow_router(new, 'a', E)
    new.load_state_dict(old.state_dict(), strict=False)
    return old, new


def test_narrowed_router_equals_the_old_router():
    old, new = grown_router()
    assert new.weight['a'].shape == (C, E) and new.weight['n'].shape == (C, E + M)
    assert new.num_experts_of('a') == E and new.num_experts_of('n') == E + M
    x = torch.randn(50, C)
    a, b = old(x, 'a'), new(x, 'a')
    assert torch.equal(b.indices, a.indices) and torch.equal(b.gates, a.gates)
    assert torch.equal(b.probs[:, :E], a.probs) and not b.probs[:, E:].any()
    assert torch.equal(b.logits[:, :E], a.logits)
    assert torch.isinf(b.logits[:, E:]).all()
    assert new(x, 'n').probs.shape == (50, E + M)


def test_narrowed_router_compute_control_stays_in_its_experts():
    _, new = grown_router()
    assert new.enabled_experts_of('a') == list(range(E))
    with pytest.raises(ValueError, match=r"expert ids in \[0, 6\), got \[0, 7\]"):
        new.set_compute('a', enabled_experts=[0, 7])
    new.set_compute('a', enabled_experts=[1, 4])
    out = new(torch.randn(9, C), 'a')
    assert set(out.indices.flatten().tolist()) <= {1, 4}
    new.set_compute('n', enabled_experts=[6, 7])
    assert set(new(torch.randn(9, C), 'n').indices.flatten().tolist()) == {6, 7}


def test_narrow_router_errors():
    router = TaskRouter(C, E, K, ['a'], CFG)
    with pytest.raises(ValueError, match="task 'a': cannot narrow 6 experts to 1"):
        narrow_router(router, 'a', 1)
    with pytest.raises(ValueError, match='cannot narrow 6 experts to 7'):
        narrow_router(router, 'a', 7)


def test_most_used_experts():
    usage = torch.tensor([3., 9., 0., 9., 1.])
    assert most_used_experts(usage, 3).tolist() == [1, 3, 0]  # ties: lower id first
    with pytest.raises(ValueError, match='Cannot copy 6 experts: the layer has 5'):
        most_used_experts(usage, 6)
    with pytest.raises(ValueError, match='all zero'):
        most_used_experts(torch.zeros(5), 2)


@pytest.mark.parametrize('kind', ['mlp', 'attn'])
@pytest.mark.parametrize('copy', [False, True])
def test_grown_layer_keeps_the_old_task_bit_identical(kind, copy):
    def build(num_experts, tasks):
        torch.manual_seed(1)
        if kind == 'mlp':
            return MoEMLP(C, num_experts, K, 8, tasks, router_cfg=CFG)
        return MoAttention(C, num_experts, K, 4, tasks, router_cfg=CFG)

    old = build(E, ['a', 'b']).eval()
    with torch.no_grad():  # trained-looking: every tensor moved
        for p in old.parameters():
            p.add_(torch.randn_like(p))
        old.aux_loss.mi_running.copy_(torch.rand(2, E))
        old.aux_loss.mi_row_updates.copy_(torch.tensor([5, 7]))
    new = build(E + M, ['b', 'n', 'a']).eval()  # another task order
    for task in ('a', 'b'):
        narrow_router(new.router, task, E)
    ids = torch.tensor([4, 1]) if copy else None
    state = grow_layer_state(old.state_dict(), new, ['a', 'b'], ids)
    stack = 'experts.w1' if kind == 'mlp' else 'q_proj'
    fresh = new.state_dict()[stack][E:].clone()
    assert new.load_state_dict(state, strict=False).missing_keys == [
        'router.weight.n', 'router.bias.n']
    rows = new.state_dict()[stack]
    assert torch.equal(rows[:E], old.state_dict()[stack])
    assert torch.equal(rows[E:], old.state_dict()[stack][ids] if copy else fresh)
    assert torch.equal(new.aux_loss.mi_running,
                       torch.cat([torch.stack([old.aux_loss.mi_running[1],
                                               torch.zeros(E),
                                               old.aux_loss.mi_running[0]]),
                                  torch.zeros(3, M)], dim=1))
    assert new.aux_loss.mi_row_updates.tolist() == [7, 0, 5]
    x = torch.randn(2, 10, C)
    for task in ('a', 'b'):
        assert torch.equal(new(x, task), old(x, task))
    assert new(x, 'n').shape == x.shape


def test_growing_into_a_layer_without_the_aux_loss_leaves_its_buffers_unexpected():
    old = MoEMLP(C, E, K, 8, ['a'], router_cfg=CFG)
    new = MoEMLP(C, E + M, K, 8, ['a', 'n'])  # no auxiliary loss
    narrow_router(new.router, 'a', E)
    state = grow_layer_state(old.state_dict(), new, ['a'])
    result = new.load_state_dict(state, strict=False)
    assert sorted(result.unexpected_keys) == sorted(
        k for k in old.state_dict() if k.startswith('aux_loss.'))
    x = torch.randn(2, 10, C)
    assert torch.equal(new.eval()(x, 'a'), old.eval()(x, 'a'))
