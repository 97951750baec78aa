"""RoutedLayer: one routing, counted once, feeds the dispatch, the usage and the loss."""
import pytest
import torch
from torch.overrides import TorchFunctionMode

from mod_squad.moe import (MoAttention, MoEMLP, RouterConfig, TokenDispatch,
                           collect_aux_losses)

TASKS = ('cls', 'det')


class CountCalls(TorchFunctionMode):
    """Counts the torch calls whose name contains one of ``names``."""

    def __init__(self, *names):
        super().__init__()
        self.names, self.calls = names, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, '__name__', '')
        if any(n in name for n in self.names):
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize('layer_type', [MoEMLP, MoAttention])
def test_a_forward_counts_its_routing_once(layer_type):
    cfg = RouterConfig(init='trunc_normal', aux_loss=dict(switch_weight=1.))
    layer = layer_type(16, 6, 2, 8, TASKS, router_cfg=cfg)
    x = torch.randn(2, 5, 16)
    with CountCalls('scatter_add', 'bincount') as counter:
        layer(x, 'det')
    assert counter.calls == ['scatter_add_']  # the dispatch's, shared by usage and loss
    route = layer.router(x.reshape(-1, 16), 'det')
    counts = TokenDispatch(route.indices, 6).counts
    assert torch.equal(layer.usage.counts[1], counts)
    assert torch.equal(layer.aux_loss._counts, counts)
    assert counts.sum() == 20
    assert set(collect_aux_losses(layer)) == {'loss_moe_switch'}


def test_route_returns_the_routing_and_its_dispatch():
    layer = MoEMLP(16, 4, 2, 8, TASKS, router_cfg=RouterConfig(init='trunc_normal'))
    tokens = torch.randn(7, 16)
    route, dispatch = layer.route(tokens, 'cls')
    assert route.indices.shape == (7, 2)
    assert torch.equal(dispatch.expert_ids, route.indices.reshape(-1).sort().values)
    assert dispatch.num_tokens == 7 and dispatch.counts.sum() == 14
