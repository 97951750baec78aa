"""grouped_linear / GroupedExperts: per-expert loop, grouped_mm path, gradients."""
import pytest
import torch
import torch.nn.functional as F

from mod_squad.moe import GroupedExperts, TokenDispatch, grouped_linear
from mod_squad.moe.experts import grouped_mm_supported


def _sorted_rows(num_tokens, num_experts, top_k, width, seed=0):
    generator = torch.Generator().manual_seed(seed)
    indices = torch.stack([
        torch.randperm(num_experts, generator=generator)[:top_k]
        for _ in range(num_tokens)
    ])
    d = TokenDispatch(indices, num_experts)
    x = torch.randn(num_tokens * top_k, width, generator=generator)
    return d, x


def _cpu_grouped_mm_works():
    if not hasattr(torch, '_grouped_mm'):
        return False
    try:
        torch._grouped_mm(torch.randn(2, 8), torch.randn(2, 8, 8),
                          offs=torch.tensor([1, 2], dtype=torch.int32))
    except RuntimeError:
        return False
    return True


@pytest.mark.parametrize('with_bias', [True, False])
def test_loop_matches_per_row_reference(with_bias):
    d, x = _sorted_rows(5, 6, 2, 8)
    weight = torch.randn(6, 8, 3, requires_grad=True)
    bias = torch.randn(6, 3, requires_grad=True) if with_bias else None
    out = grouped_linear(x, weight, bias, d, impl='loop')
    expected = torch.stack([
        x[i] @ weight[e] + (bias[e] if with_bias else 0)
        for i, e in enumerate(d.expert_ids.tolist())
    ])
    torch.testing.assert_close(out, expected)
    assert 0 in d.splits  # an expert without rows


@pytest.mark.skipif(not _cpu_grouped_mm_works(), reason='no torch._grouped_mm on CPU')
@pytest.mark.parametrize('num_tokens', [1, 7])
def test_grouped_mm_matches_loop(num_tokens):
    d, x = _sorted_rows(num_tokens, 8, 3, 16, seed=num_tokens)
    experts = GroupedExperts(8, 16, 24)
    upstream = torch.randn(x.shape)
    results = {}
    for impl in ('loop', 'grouped_mm'):
        experts.zero_grad()
        experts.impl = impl
        xi = x.clone().requires_grad_()
        out = experts(xi, d)
        (out * upstream).sum().backward()
        results[impl] = [out, xi.grad] + [p.grad for p in experts.parameters()]
    for a, b in zip(results['grouped_mm'], results['loop']):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_experts_match_reference_and_unused_experts_get_zero_grads():
    d, x = _sorted_rows(3, 8, 2, 8)
    experts = GroupedExperts(8, 8, 4, impl='loop')
    x.requires_grad_()
    out = experts(x, d)
    out.sum().backward()
    ex = experts
    expected = torch.stack([
        F.gelu(x[i] @ ex.w1[e] + ex.b1[e]) @ ex.w2[e] + ex.b2[e]
        for i, e in enumerate(d.expert_ids.tolist())
    ])
    torch.testing.assert_close(out, expected)
    unused = (d.counts == 0).nonzero().flatten()
    assert len(unused) >= 2
    for p in experts.parameters():
        assert p.grad is not None and p.grad[unused].eq(0).all()


def test_auto_uses_the_loop_on_cpu_and_rejects_unknown_impl():
    d, x = _sorted_rows(4, 4, 2, 8)
    w = torch.randn(4, 8, 8)
    assert not grouped_mm_supported(x, w)
    torch.testing.assert_close(
        grouped_linear(x, w, None, d), grouped_linear(x, w, None, d, impl='loop'))
    with pytest.raises(ValueError, match='impl'):
        grouped_linear(x, w, None, d, impl='bmm')
