"""Auxiliary losses: mutual information (batch and heterogeneous forms), switch, z."""
import math

import pytest
import torch
import torch.nn as nn

from mod_squad.moe import (MoAttention, MoEAuxLossConfig, MoEMLP, RouterAuxLoss,
                           RouterOutput, collect_aux_losses, mutual_information_loss,
                           switch_loss)

# P(t, e) = [[0.4, 0.1], [0.1, 0.4]]: P(t) = P(e) = [0.5, 0.5], so
# MI = 2 * 0.4 * log(0.4 / 0.25) + 2 * 0.1 * log(0.1 / 0.25)
#    = 0.8 * log(1.6) + 0.2 * log(0.4) = 0.376003 - 0.183258 = 0.192745
JOINT = [[0.4, 0.1], [0.1, 0.4]]
MI = 0.8 * math.log(1.6) + 0.2 * math.log(0.4)


def _route(probs, logits=None, top_k=1):
    """A RouterOutput of given (N, E) probabilities (with grad)."""
    probs = torch.tensor(probs, requires_grad=True)
    gates, indices = probs.detach().topk(top_k, dim=-1)
    return RouterOutput(probs, indices, gates, logits if logits is not None else probs)


def test_mutual_information_of_a_hand_computed_joint():
    assert abs(MI - 0.192745) < 1e-6
    loss = mutual_information_loss(torch.tensor(JOINT, dtype=torch.float64))
    assert loss.item() == pytest.approx(-MI, rel=1e-9)
    # independent task and expert: no information
    independent = torch.outer(torch.tensor([0.3, 0.7]), torch.tensor([0.2, 0.5, 0.3]))
    assert abs(mutual_information_loss(independent).item()) < 1e-6
    # rows of absent tasks add nothing and give finite gradients
    padded = torch.tensor(JOINT + [[0., 0.]], requires_grad=True)
    loss = mutual_information_loss(padded)
    loss.backward()
    assert loss.item() == pytest.approx(-MI, rel=1e-5)
    assert torch.isfinite(padded.grad).all()


def test_batch_form_builds_the_joint_from_all_tasks_of_the_step():
    aux = RouterAuxLoss(MoEAuxLossConfig(mi_weight=0.5, mi_form='batch'), 3, 2)
    # task 0: 2 tokens at [0.8, 0.2]; task 2: 2 tokens at [0.2, 0.8] -> JOINT / 4 tokens
    aux.update(0, _route([[0.8, 0.2]]))
    aux.update(2, _route([[0.2, 0.8], [0.2, 0.8]]))
    aux.update(0, _route([[0.8, 0.2]]))
    losses = aux.compute()
    assert set(losses) == {'mi'}
    assert losses['mi'].item() == pytest.approx(-0.5 * MI, rel=1e-5)
    assert aux.compute() == {}  # state cleared


def test_heterogeneous_form_running_average():
    cfg = MoEAuxLossConfig(mi_weight=2., mi_form='heterogeneous', momentum=0.9,
                           warmup_iters=3)
    aux = RouterAuxLoss(cfg, num_tasks=2, num_experts=2)
    a, b, c, d = [0.8, 0.2], [0.6, 0.4], [0.3, 0.7], [0.5, 0.5]
    # warm-up: cumulative mean per task, no loss
    for task, p in ((0, a), (0, b), (1, c)):
        aux.update(task, _route([p, p]))
        assert aux.compute()['mi'].item() == 0
    running = torch.tensor([[0.7, 0.3], c])
    torch.testing.assert_close(aux.mi_running, running)
    assert aux.mi_row_updates.tolist() == [2, 1] and aux.mi_iter.item() == 3

    # after warm-up: current row = batch estimate (with grad), others = running rows
    route = _route([d, [0.7, 0.3]])  # mean [0.6, 0.4]
    aux.update(0, route)
    loss = aux.compute()['mi']
    expected = mutual_information_loss(torch.tensor([[0.6, 0.4], c]) / 2)
    assert loss.item() == pytest.approx(2 * expected.item(), rel=1e-5)
    assert not aux.mi_running.requires_grad
    loss.backward()
    assert route.probs.grad.abs().sum() > 0
    # the running row moves with the momentum
    torch.testing.assert_close(
        aux.mi_running, torch.tensor([[0.9 * 0.7 + 0.1 * 0.6, 0.9 * 0.3 + 0.1 * 0.4], c]))
    assert 'mi_running' in aux.state_dict()


def test_switch_and_z_losses():
    cfg = MoEAuxLossConfig(switch_weight=1., z_weight=0.1)
    aux = RouterAuxLoss(cfg, num_tasks=1, num_experts=2)
    logits = torch.tensor([[0., 0.], [1., -1.]])
    aux.update(0, RouterOutput(
        torch.tensor([[0.6, 0.4], [0.6, 0.4]]), torch.tensor([[0], [0]]), None, logits))
    aux.update(0, RouterOutput(
        torch.tensor([[0.6, 0.4], [0.6, 0.4]]), torch.tensor([[0], [1]]), None, logits))
    losses = aux.compute()
    # f = [3, 1] / 4, P = [0.6, 0.4]: 2 * (0.75 * 0.6 + 0.25 * 0.4) = 1.1
    assert losses['switch'].item() == pytest.approx(1.1)
    lse = [math.log(2.), math.log(math.e + 1 / math.e)]
    assert losses['z'].item() == pytest.approx(0.1 * (lse[0]**2 + lse[1]**2) / 2)
    assert switch_loss(torch.tensor([5, 5]), torch.tensor([1., 1.])).item() == 1.


class TwoLayers(nn.Module):

    def __init__(self, cfg):
        super().__init__()
        tasks = ('cls', 'det')
        self.attn = MoAttention(16, 4, 2, 8, tasks, aux_cfg=cfg, zero_init_router=False)
        self.mlp = MoEMLP(16, 4, 2, 8, tasks, aux_cfg=cfg, zero_init_router=False)

    def forward(self, x, task):
        return self.mlp(self.attn(x, task), task)


def test_collect_sums_layers_per_kind_and_clears_the_state():
    cfg = MoEAuxLossConfig(mi_weight=0.1, mi_form='batch', switch_weight=0.01)
    model = TwoLayers(cfg)
    x = torch.randn(2, 3, 16)
    model(x, 'cls')
    model(x, 'det')  # Mod-Squad style: several tasks before the collection
    per_layer = [m.aux_loss.compute() for m in (model.attn, model.mlp)]
    model(x, 'cls')
    model(x, 'det')
    losses = collect_aux_losses(model)
    assert set(losses) == {'loss_moe_mi', 'loss_moe_switch'}  # z off
    for kind in ('mi', 'switch'):
        expected = per_layer[0][kind] + per_layer[1][kind]
        torch.testing.assert_close(losses[f'loss_moe_{kind}'], expected)
    assert losses['loss_moe_mi'] < 0  # different routers per task: some information
    sum(losses.values()).backward()
    assert all(p.grad.abs().sum() > 0 for p in model.mlp.router.weight.values())
    assert collect_aux_losses(model) == {}


def test_nothing_is_accumulated_in_eval_without_grad_or_with_zero_weights():
    model = TwoLayers(MoEAuxLossConfig(mi_weight=0.1, mi_form='batch'))
    x = torch.randn(2, 3, 16)
    model.eval()
    model(x, 'cls')
    assert collect_aux_losses(model) == {}
    model.train()
    with torch.no_grad():
        model(x, 'cls')
    assert collect_aux_losses(model) == {}
    off = TwoLayers(MoEAuxLossConfig())
    assert off.mlp.aux_loss is None
    off(x, 'cls')
    assert collect_aux_losses(off) == {}


def test_config_validation():
    with pytest.raises(ValueError, match='mi_form'):
        MoEAuxLossConfig(mi_form='online')
    with pytest.raises(ValueError, match='momentum'):
        MoEAuxLossConfig(momentum=1.)
