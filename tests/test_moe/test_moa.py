"""MoAttention against a naive per-token reference (forward and all gradients)."""
import pytest
import torch
from torch.overrides import TorchFunctionMode

from mod_squad.moe import MoAttention
from moe_reference import (GATE_EPS, assert_matches_reference, keep_experts, naive_moa,
                           spread_router)

TASKS = ('cls', 'det')


def _layer(num_experts, top_k, **kwargs):
    torch.manual_seed(0)
    layer = MoAttention(16, num_experts, top_k, 8, TASKS, **kwargs)
    spread_router(layer)
    with torch.no_grad():  # non-zero biases, so that their gradients are checked
        for b in (layer.q_bias, layer.kv_proj.bias, layer.o_bias):
            if b is not None:
                b.normal_()
    return layer


@pytest.mark.parametrize('num_experts,top_k,shape,qkv_bias', [
    (4, 2, (1, 1, 16), True),
    (6, 3, (2, 5, 16), True),
    (8, 2, (1, 3, 16), False),
    (3, 3, (2, 4, 16), True),
])
def test_matches_per_token_reference(num_experts, top_k, shape, qkv_bias):
    layer = _layer(num_experts, top_k, qkv_bias=qkv_bias)
    assert_matches_reference(layer, naive_moa, torch.randn(shape), 'det')
    if num_experts == 8:  # 3 tokens x 2 of 8 heads: some head got nobody
        assert layer.usage.counts[1].eq(0).any()


def test_all_heads_equal_dense_multi_query_attention():
    layer = _layer(4, 4)
    x = torch.randn(2, 5, 16)
    probs = torch.softmax(x @ layer.router.weight[TASKS[0]] + layer.router.bias[TASKS[0]], -1)
    k, v = layer.kv_proj(x).chunk(2, dim=-1)
    dense = layer.o_bias
    for e in range(4):
        q = x @ layer.q_proj[e] + layer.q_bias[e]
        attn = torch.softmax(q @ k.transpose(1, 2) / 8**0.5, -1)
        dense = dense + (probs[..., e:e + 1] + GATE_EPS) * (attn @ v @ layer.o_proj[e])
    torch.testing.assert_close(layer(x, 'cls'), dense, rtol=1e-5, atol=1e-5)


def test_windows_are_independent_batches():
    layer = _layer(4, 2)
    x = torch.randn(3, 4, 16)
    full = layer(x, 'cls')
    torch.testing.assert_close(layer(x[1:2], 'cls'), full[1:2])


def test_attention_dropout_only_in_training():
    layer = _layer(4, 2, attn_drop=0.5)
    x = torch.randn(2, 6, 16)
    layer.eval()
    torch.testing.assert_close(layer(x, 'cls'), layer(x, 'cls'))
    layer.train()
    assert not torch.allclose(layer(x, 'cls'), layer(x, 'cls'))


def test_autocast_bf16():
    layer = _layer(6, 3)
    x = torch.randn(2, 5, 16)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y = layer(x, 'det')
    torch.testing.assert_close(y.float(), layer(x, 'det'), rtol=0.05, atol=0.05)


def test_parameter_names_and_shapes():
    layer = MoAttention(16, 6, 3, 8, TASKS)
    assert layer.task_names == TASKS
    shapes = {name: tuple(p.shape) for name, p in layer.named_parameters()}
    assert shapes == {
        **{f'router.weight.{t}': (16, 6) for t in TASKS},
        **{f'router.bias.{t}': (6, ) for t in TASKS},
        'q_proj': (6, 16, 8),
        'q_bias': (6, 8),
        'kv_proj.weight': (16, 16),
        'kv_proj.bias': (16, ),
        'o_proj': (6, 8, 16),
        'o_bias': (16, ),
    }


# --- compute control ------------------------------------------------------------------
class QueryRows(TorchFunctionMode):
    """Rows of the attention queries and of the per-head matmuls (query and output
    heads of a layer without biases; the router's is an ``addmm``) run inside."""

    def __init__(self):
        super().__init__()
        self.rows = dict(queries=0, head_rows=0)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, '__name__', '')
        if name == 'scaled_dot_product_attention':
            self.rows['queries'] += args[0].shape[2]
        elif name in ('matmul', 'mm'):
            self.rows['head_rows'] += args[0].shape[0]
        return func(*args, **(kwargs or {}))


def test_full_compute_is_bit_identical():
    layer = _layer(6, 3)
    x = torch.randn(2, 5, 16)
    before = layer(x, 'det')
    layer.router.set_compute('det', top_k=3, enabled_experts=list(range(6)))
    assert torch.equal(layer(x, 'det'), before)


def test_lower_k_runs_fewer_queries():
    layer = _layer(8, 4, qkv_bias=False)
    x = torch.randn(2, 5, 16)
    with QueryRows() as full:
        layer(x, 'det')
    layer.router.set_compute('det', top_k=1)
    with QueryRows() as low:
        y = layer(x, 'det')
    # per image N * k queries; query and output heads of the B * N * k slots
    assert full.rows == dict(queries=5 * 4, head_rows=2 * 40)
    assert low.rows == dict(queries=5 * 1, head_rows=2 * 10)
    built = MoAttention(16, 8, 1, 8, TASKS, qkv_bias=False)  # same weights, k = 1
    built.load_state_dict(layer.state_dict())
    assert torch.equal(y, built(x, 'det'))


def test_disabled_heads_equal_a_layer_of_the_enabled_ones():
    layer = _layer(6, 2)
    x = torch.randn(2, 5, 16)
    layer.router.set_compute('cls', enabled_experts=[1, 4, 5])
    y = layer(x, 'cls')
    assert layer.usage.counts[0, [0, 2, 3]].eq(0).all()
    small = MoAttention(16, 3, 2, 8, TASKS)
    small.load_state_dict(keep_experts(layer, [1, 4, 5]))
    torch.testing.assert_close(y, small(x, 'cls'))
