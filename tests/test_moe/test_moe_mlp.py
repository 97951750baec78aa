"""MoEMLP against a naive per-token reference (forward and all gradients)."""
import pytest
import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp

from mod_squad.moe import MoEAuxLossConfig, MoEMLP, RouterConfig, collect_aux_losses
from moe_reference import (GATE_EPS, assert_matches_reference, keep_experts,
                           naive_moe_mlp, spread_router)

TASKS = ('cls', 'seg')


def _layer(num_experts, top_k, **kwargs):
    torch.manual_seed(0)
    layer = MoEMLP(16, num_experts, top_k, 8, TASKS, **kwargs)
    spread_router(layer)
    with torch.no_grad():  # non-zero biases, so that their gradients are checked
        layer.experts.b1.normal_()
        layer.experts.b2.normal_()
    return layer


@pytest.mark.parametrize('num_experts,top_k,shape', [
    (4, 1, (1, 16)),
    (4, 2, (2, 3, 16)),
    (8, 3, (5, 16)),
    (6, 6, (4, 16)),
])
def test_matches_per_token_reference(num_experts, top_k, shape):
    layer = _layer(num_experts, top_k)
    x = torch.randn(shape)
    assert_matches_reference(layer, naive_moe_mlp, x, 'seg')
    if num_experts == 8:  # 5 tokens x 3 of 8 experts: check some expert got nobody
        assert layer.usage.counts[1].eq(0).any()


@pytest.mark.parametrize('hidden,renormalize', [(12, False), (None, True)])
def test_router_variants_match_reference(hidden, renormalize):
    layer = _layer(6, 2, router_cfg=RouterConfig(hidden=hidden, renormalize=renormalize))
    assert_matches_reference(layer, naive_moe_mlp, torch.randn(7, 16), 'cls')


def test_all_experts_equal_the_dense_weighted_sum():
    layer = _layer(5, 5)
    x = torch.randn(6, 16)
    probs = torch.softmax(x @ layer.router.weight[TASKS[0]] + layer.router.bias[TASKS[0]], -1)
    ex = layer.experts
    dense = sum((probs[:, e:e + 1] + GATE_EPS) *
                (F.gelu(x @ ex.w1[e] + ex.b1[e]) @ ex.w2[e] + ex.b2[e])
                for e in range(5))
    torch.testing.assert_close(layer(x, 'cls'), dense, rtol=1e-5, atol=1e-5)


def test_no_tokens():
    layer = _layer(4, 2)
    x = torch.randn(0, 16, requires_grad=True)
    y = layer(x, 'cls')
    y.sum().backward()
    assert y.shape == (0, 16) and x.grad.shape == (0, 16)


def test_autocast_bf16_routes_like_fp32():
    layer = _layer(6, 2)
    x = torch.randn(3, 5, 16)
    y32 = layer(x, 'cls')
    counts32 = layer.usage.counts.clone()
    layer.usage.reset()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y = layer(x, 'cls')
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(layer.usage.counts, counts32)
    torch.testing.assert_close(y.float(), y32, rtol=0.05, atol=0.05)


def test_dropout_only_in_training():
    layer = _layer(4, 2, drop=0.5)
    x = torch.randn(8, 16)
    layer.eval()
    torch.testing.assert_close(layer(x, 'cls'), layer(x, 'cls'))
    layer.train()
    assert not torch.allclose(layer(x, 'cls'), layer(x, 'cls'))


def test_activation_checkpointing_records_routing_once():
    layer = _layer(4, 2, router_cfg=RouterConfig(aux_loss=MoEAuxLossConfig(z_weight=1.)))
    x = torch.randn(2, 5, 16, requires_grad=True)
    y = cp.checkpoint(layer, x, 'seg', use_reentrant=False)
    losses = collect_aux_losses(layer)
    (y.sum() + losses['loss_moe_z']).backward()  # recomputes the forward
    assert layer.usage.tokens.tolist() == [0, 10]
    assert layer.usage.counts.sum() == 20
    assert collect_aux_losses(layer) == {}
    ref = x.detach().clone().requires_grad_()
    y = layer(ref, 'seg')
    (y.sum() + collect_aux_losses(layer)['loss_moe_z']).backward()
    torch.testing.assert_close(x.grad, ref.grad)


def test_exposes_task_names_and_per_task_router_weights():
    layer = MoEMLP(16, 4, 2, 8, TASKS)
    assert layer.task_names == TASKS
    shapes = {name: tuple(p.shape) for name, p in layer.named_parameters()}
    assert shapes == {
        **{f'router.weight.{t}': (16, 4) for t in TASKS},
        **{f'router.bias.{t}': (4, ) for t in TASKS},
        'experts.w1': (4, 16, 8),
        'experts.b1': (4, 8),
        'experts.w2': (4, 8, 16),
        'experts.b2': (4, 16),
    }
    assert layer.aux_loss is None  # no auxiliary loss configured


# --- compute control ------------------------------------------------------------------
def _rows_through_experts(layer, x, task):
    """Output, and the (token, expert) rows the experts ran (their dispatch's slots)."""
    rows = []
    handle = layer.experts.register_forward_pre_hook(
        lambda module, args: rows.append(int(args[1].counts.sum())))
    y = layer(x, task)
    handle.remove()
    return y, rows[0]


def test_full_compute_is_bit_identical():
    layer = _layer(6, 3)
    x = torch.randn(2, 5, 16)
    before = layer(x, 'seg')
    layer.router.set_compute('seg', top_k=3, enabled_experts=list(range(6)))
    assert torch.equal(layer(x, 'seg'), before)


def test_lower_k_sends_fewer_rows_through_the_experts():
    layer = _layer(8, 4)
    x = torch.randn(2, 5, 16)
    _, rows = _rows_through_experts(layer, x, 'seg')
    assert rows == 10 * 4
    layer.router.set_compute('seg', top_k=2)
    assert layer.top_k_of('seg') == 2 and layer.top_k == 4
    y, rows = _rows_through_experts(layer, x, 'seg')
    assert rows == 10 * 2
    assert layer.usage.counts[1].sum() == 10 * 4 + 10 * 2
    built = MoEMLP(16, 8, 2, 8, TASKS)  # the same weights, built with k = 2
    built.load_state_dict(layer.state_dict())
    assert torch.equal(y, built(x, 'seg'))


def test_disabled_experts_equal_a_layer_of_the_enabled_ones():
    layer = _layer(6, 2)
    x = torch.randn(12, 16)
    layer.router.set_compute('cls', enabled_experts=[0, 2, 5])
    assert layer.enabled_experts_of('cls') == [0, 2, 5]
    y = layer(x, 'cls')
    assert layer.usage.counts[0, [1, 3, 4]].eq(0).all()
    small = MoEMLP(16, 3, 2, 8, TASKS)
    small.load_state_dict(keep_experts(layer, [0, 2, 5]))
    torch.testing.assert_close(y, small(x, 'cls'))


def test_training_with_disabled_experts_gives_finite_gradients_and_losses():
    """The settings apply in training too: the auxiliary losses see probability 0
    (logit -inf) for the disabled experts, whose router columns get zero gradient."""
    aux = MoEAuxLossConfig(mi_weight=1., mi_form='batch', switch_weight=1., z_weight=1.)
    layer = _layer(6, 2, router_cfg=RouterConfig(aux_loss=aux, noisy_gating=True))
    layer.router.set_compute('seg', top_k=1, enabled_experts=[1, 4])
    layer.train()
    y = layer(torch.randn(9, 16), 'seg')
    losses = collect_aux_losses(layer)
    assert set(losses) == {'loss_moe_mi', 'loss_moe_switch', 'loss_moe_z'}
    assert all(torch.isfinite(loss) for loss in losses.values())
    (y.sum() + sum(losses.values())).backward()
    for name, param in layer.named_parameters():
        if param.grad is not None:
            assert torch.isfinite(param.grad).all(), name
    grad = layer.router.weight['seg'].grad
    assert grad[:, [0, 2, 3, 5]].eq(0).all() and grad[:, [1, 4]].ne(0).any()
    assert layer.experts.w1.grad[[0, 2, 3, 5]].eq(0).all()
