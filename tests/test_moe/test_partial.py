"""train_experts: some experts of a stacked (E, ...) tensor train, the others stay
exactly as they are; outputs and state dicts are the unsplit layer's."""
import copy

import pytest
import torch

from mod_squad.moe import (MoAttention, MoEMLP, RouterConfig, train_experts,
                           trainable_experts)

TASKS = ('a', 'b')
ROUTER = RouterConfig(init='trunc_normal')  # tokens spread over the experts


def moe_mlp():
    torch.manual_seed(0)
    return MoEMLP(16, 8, 2, 12, TASKS, router_cfg=ROUTER)


def moa():
    torch.manual_seed(0)
    return MoAttention(16, 6, 2, 8, TASKS, router_cfg=ROUTER)


LAYERS = [moe_mlp, moa]
STACKS = {MoEMLP: ('experts.w1', 'experts.b1', 'experts.w2', 'experts.b2'),
          MoAttention: ('q_proj', 'q_bias', 'o_proj')}


@pytest.mark.parametrize('make', LAYERS)
def test_split_layer_equals_the_unsplit_one_forward_and_backward(make):
    """Outputs are torch.equal; the trainable rows get exactly the unsplit stack's
    gradient rows, the frozen rows none."""
    plain, split = make(), make()
    train_experts(split, [1, 4])
    x = torch.randn(2, 5, 16)
    out_plain, out_split = plain(x, 'a'), split(x, 'a')
    assert torch.equal(out_plain, out_split)
    out_plain.square().sum().backward()
    out_split.square().sum().backward()
    grads = dict(split.named_parameters())
    for name in STACKS[type(plain)]:
        owner, _, attr = name.rpartition('.')
        prefix = f'{owner}.' if owner else ''
        full = dict(plain.named_parameters())[name].grad
        assert grads[f'{prefix}parametrizations.{attr}.original'].grad is None
        rows = grads[f'{prefix}parametrizations.{attr}.0.rows'].grad
        torch.testing.assert_close(rows, full[[1, 4]], rtol=0, atol=1e-6)


def stack_keys(layer):
    return STACKS[MoAttention if isinstance(layer, MoAttention) else MoEMLP]


@pytest.mark.parametrize('make', LAYERS)
def test_frozen_rows_bit_identical_after_adamw_with_weight_decay(make):
    """Only experts 0 and 5 train: every other row and parameter stays bit-identical
    through AdamW steps with weight decay, and gets no optimiser state."""
    layer = make()
    for p in layer.parameters():
        p.requires_grad_(False)
    train_experts(layer, [0, 5])
    before = copy.deepcopy(layer.state_dict())
    optimizer = torch.optim.AdamW(layer.parameters(), lr=1e-2, weight_decay=0.5)
    for step in range(3):
        optimizer.zero_grad()
        layer(torch.randn(2, 5, 16), TASKS[step % 2]).square().sum().backward()
        optimizer.step()
    after = layer.state_dict()
    assert set(after) == set(before)
    for key, value in before.items():
        if key in stack_keys(layer):
            frozen = [e for e in range(value.shape[0]) if e not in (0, 5)]
            assert torch.equal(after[key][frozen], value[frozen]), key
            assert not torch.equal(after[key][[0, 5]], value[[0, 5]]), key
        else:
            assert torch.equal(after[key], value), key
    trained = [p for p in layer.parameters() if p.requires_grad]
    assert len(trained) == len(stack_keys(layer))
    assert {id(p) for p in optimizer.state} == {id(p) for p in trained}


@pytest.mark.parametrize('make', LAYERS)
def test_state_dict_keeps_the_stock_keys_and_round_trips(make):
    """A split layer saves and loads the stock (E, ...) keys: an ordinary
    checkpoint loads into it, its weights into an ordinary layer (same outputs)."""
    plain, split = make(), make()
    train_experts(split, [0, 3])
    assert {k: v.shape for k, v in split.state_dict().items()} == {
        k: v.shape for k, v in plain.state_dict().items()}
    torch.manual_seed(1)
    other = type(plain)(**_args(make))
    split.load_state_dict(other.state_dict())
    plain.load_state_dict(split.state_dict())
    x = torch.randn(2, 5, 16)
    expected = other(x, 'b')
    assert torch.equal(split(x, 'b'), expected)
    assert torch.equal(plain(x, 'b'), expected)
    assert trainable_experts(split) == [0, 3]


def _args(make):
    if make is moe_mlp:
        return dict(embed_dims=16, num_experts=8, top_k=2, hidden_features=12,
                    task_names=TASKS, router_cfg=ROUTER)
    return dict(embed_dims=16, num_experts=6, top_k=2, head_dims=8, task_names=TASKS,
                router_cfg=ROUTER)


def test_resplit_none_and_all_experts():
    """Splitting again keeps the current values; no or all experts leave whole
    Parameters, frozen or trainable."""
    layer, plain = moe_mlp(), moe_mlp()
    x = torch.randn(3, 16)
    train_experts(layer, [1])
    train_experts(layer, [2, 6])
    assert trainable_experts(layer) == [2, 6]
    assert torch.equal(layer(x, 'a'), plain(x, 'a'))
    train_experts(layer, [])
    assert trainable_experts(layer) == []
    assert not any(p.requires_grad for p in layer.experts.parameters())
    train_experts(layer, range(8))
    assert trainable_experts(layer) == list(range(8))
    assert [n for n, _ in layer.experts.named_parameters()] == ['w1', 'b1', 'w2', 'b2']
    assert torch.equal(layer(x, 'a'), plain(x, 'a'))


def test_bad_expert_ids_name_the_problem():
    layer = moe_mlp()
    with pytest.raises(ValueError, match=r'\[8\] are out of range: the layer has 8 '):
        train_experts(layer, [1, 8])
    with pytest.raises(ValueError, match='repeat an expert'):
        train_experts(layer, [1, 1])


def test_checkpoint_with_other_expert_count_is_reported():
    layer = moe_mlp()
    train_experts(layer, [1])
    state = layer.state_dict()
    state['experts.w1'] = state['experts.w1'][:4]
    with pytest.raises(RuntimeError, match='experts.w1: the checkpoint has 4 experts, '
                       'the layer 8'):
        layer.load_state_dict(state)
