"""Auxiliary losses: mutual information (batch and heterogeneous forms), switch, z."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mod_squad.moe import (MoAttention, MoEAuxLossConfig, MoEMLP, RouterAuxLoss,
                           RouterConfig, RouterOutput, TokenDispatch, collect_aux_losses,
                           mutual_information_loss, switch_loss)

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


def _update(aux, task_index, route):
    """``aux.update`` with the slot counts a layer's dispatch would give."""
    aux.update(task_index, route, TokenDispatch(route.indices, aux.num_experts).counts)


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
    aux = RouterAuxLoss(MoEAuxLossConfig(mi_weight=0.5, mi_form='batch', eps=0.), 3, 2)
    # task 0: 2 tokens at [0.8, 0.2]; task 2: 2 tokens at [0.2, 0.8] -> JOINT / 4 tokens
    _update(aux, 0, _route([[0.8, 0.2]]))
    _update(aux, 2, _route([[0.2, 0.8], [0.2, 0.8]]))
    _update(aux, 0, _route([[0.8, 0.2]]))
    losses = aux.compute()
    assert set(losses) == {'mi'}
    assert losses['mi'].item() == pytest.approx(-0.5 * MI, rel=1e-5)
    assert aux.compute() == {}  # state cleared


def test_heterogeneous_form_running_average():
    cfg = MoEAuxLossConfig(mi_weight=2., mi_form='heterogeneous', momentum=0.9,
                           warmup_iters=3, eps=0.)
    aux = RouterAuxLoss(cfg, num_tasks=2, num_experts=2)
    a, b, c, d = [0.8, 0.2], [0.6, 0.4], [0.3, 0.7], [0.5, 0.5]
    # warm-up: cumulative mean per task, no loss
    for task, p in ((0, a), (0, b), (1, c)):
        _update(aux, task, _route([p, p]))
        assert aux.compute()['mi'].item() == 0
    running = torch.tensor([[0.7, 0.3], c])
    torch.testing.assert_close(aux.mi_running, running)
    assert aux.mi_row_updates.tolist() == [2, 1] and aux.mi_iter.item() == 3

    # after warm-up: current row = batch estimate (with grad), others = running rows
    route = _route([d, [0.7, 0.3]])  # mean [0.6, 0.4]
    _update(aux, 0, route)
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
    cfg = MoEAuxLossConfig(switch_weight=1., z_weight=0.1, eps=0.)
    aux = RouterAuxLoss(cfg, num_tasks=1, num_experts=2)
    logits = torch.tensor([[0., 0.], [1., -1.]])
    _update(aux, 0, RouterOutput(
        torch.tensor([[0.6, 0.4], [0.6, 0.4]]), torch.tensor([[0], [0]]), None, logits))
    _update(aux, 0, RouterOutput(
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
        router_cfg = RouterConfig(init='trunc_normal', aux_loss=cfg)
        self.attn = MoAttention(16, 4, 2, 8, tasks, router_cfg=router_cfg)
        self.mlp = MoEMLP(16, 4, 2, 8, tasks, router_cfg=router_cfg)

    def forward(self, x, task):
        return self.mlp(self.attn(x, task), task)


def test_collect_sums_layers_per_kind_and_clears_the_state():
    # eps=0: the exact MI, whose sign the check below relies on (the authors' eps
    # adds about eps * (T + E - 1) to it, more than the MI of fresh routers)
    cfg = MoEAuxLossConfig(mi_weight=0.1, mi_form='batch', switch_weight=0.01, eps=0.)
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
    with pytest.raises(ValueError, match='eps must be >= 0, got -1'):
        MoEAuxLossConfig(eps=-1.)


def authors_aux_losses(forwards, num_tasks, num_experts, top_k):
    """The Mod-Squad code's TaskMoE ``update_aux_statistics`` over ``forwards``
    ((task, logits) pairs), then ``get_aux_loss_and_clear``, transcribed."""
    acc_probs, acc_freq, acc_lsesq, acc_lsesq_count = 0., 0., 0., 0.
    mi_task_gate = torch.zeros(num_tasks, num_experts, dtype=torch.float64)
    for task, logits in forwards:
        probs = torch.softmax(logits, dim=1) + 1e-4
        top_k_gates, top_k_indices = probs.topk(top_k, dim=1)
        gates = torch.zeros_like(probs).scatter(1, top_k_indices, top_k_gates)
        lsesq = torch.log(torch.exp(logits).sum(dim=1) + 0.0001)**2
        acc_probs = acc_probs + probs.sum(0)
        acc_freq = acc_freq + (gates > 0).double().sum(0)
        acc_lsesq = acc_lsesq + lsesq.sum()
        acc_lsesq_count = acc_lsesq_count + lsesq.size(0)
        mi_task_gate[task] = mi_task_gate[task] + probs.sum(0)
    switchloss = (F.normalize(acc_probs, p=1, dim=0) *
                  F.normalize(acc_freq, p=1, dim=0)).sum() * num_experts
    zloss = acc_lsesq / acc_lsesq_count
    tot = acc_freq.sum() / top_k
    mi_task_gate = mi_task_gate / (tot + 0.0001)
    p_ti = torch.sum(mi_task_gate, dim=1, keepdim=True) + 0.0001
    p_ei = torch.sum(mi_task_gate, dim=0, keepdim=True) + 0.0001
    mi_loss = -(mi_task_gate * torch.log(mi_task_gate / p_ti / p_ei + 0.0001)).sum()
    return {'mi': mi_loss, 'switch': switchloss, 'z': zloss}


def _random_forwards(num_experts, generator):
    """(task, logits) of forwards of tasks 0, 2, 0, 1 with 5..8 tokens, float64."""
    return [(t, 1.5 * torch.randn(n, num_experts, generator=generator,
                                  dtype=torch.float64))
            for t, n in ((0, 5), (2, 8), (0, 6), (1, 7))]


def _our_aux_losses(forwards, cfg, num_tasks, num_experts, top_k):
    aux = RouterAuxLoss(cfg, num_tasks, num_experts)
    for task, logits in forwards:
        probs = logits.softmax(-1)
        top, indices = probs.sort(dim=-1, descending=True, stable=True)
        route = RouterOutput(probs, indices[:, :top_k], top[:, :top_k], logits)
        _update(aux, task, route)
    return aux.compute()


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_default_eps_equals_the_authors_formulas(seed):
    """Batch-form MI, switch and z losses with the default eps (1e-4) equal a direct
    transcription of the authors' code on random routings; without eps they do not."""
    generator = torch.Generator().manual_seed(seed)
    forwards = _random_forwards(6, generator)
    expected = authors_aux_losses(forwards, 3, 6, top_k=2)
    weights = dict(mi_weight=1., mi_form='batch', switch_weight=1., z_weight=1.)
    cfg = MoEAuxLossConfig(**weights)
    assert cfg.eps == 1e-4
    ours = _our_aux_losses(forwards, cfg, 3, 6, top_k=2)
    for kind in ('mi', 'switch', 'z'):
        torch.testing.assert_close(ours[kind], expected[kind], rtol=1e-7, atol=0,
                                   msg=lambda m, kind=kind: f'{kind}: {m}')
    exact = _our_aux_losses(forwards, MoEAuxLossConfig(**weights, eps=0.), 3, 6, 2)
    for kind in ('mi', 'switch', 'z'):
        assert abs(exact[kind] / expected[kind] - 1) > 1e-6, kind


def test_eps_in_the_heterogeneous_form():
    """One task's row: p(e | t) = (mass + eps N) / (N + eps), then the MI with eps."""
    eps = 1e-2
    cfg = MoEAuxLossConfig(mi_weight=1., mi_form='heterogeneous', warmup_iters=0, eps=eps)
    aux = RouterAuxLoss(cfg, num_tasks=2, num_experts=2)
    _update(aux, 1, _route([[0.9, 0.1], [0.5, 0.5]]))
    row = (torch.tensor([1.4, 0.6]) + 2 * eps) / (2 + eps)
    expected = mutual_information_loss(torch.stack([torch.zeros(2), row]) / 2, eps)
    torch.testing.assert_close(aux.compute()['mi'], expected)
    torch.testing.assert_close(aux.mi_running[1], (1 - cfg.momentum) * row)


def test_mutual_information_eps_is_the_authors_placement():
    joint = torch.tensor(JOINT, dtype=torch.float64)
    eps = 1e-2
    p_t = joint.sum(1, keepdim=True) + eps
    p_e = joint.sum(0, keepdim=True) + eps
    expected = -(joint * torch.log(joint / p_t / p_e + eps)).sum()
    torch.testing.assert_close(mutual_information_loss(joint, eps), expected)
