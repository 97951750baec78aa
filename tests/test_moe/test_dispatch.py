"""TokenDispatch: dropless sort by expert, inverse permutation, sum over slots."""
import torch

from mod_squad.moe import TokenDispatch


def test_sorted_slots_group_tokens_by_expert_stably():
    indices = torch.tensor([[2, 0], [0, 3], [2, 3], [0, 2]])
    d = TokenDispatch(indices, num_experts=5)
    assert d.counts.tolist() == [3, 0, 3, 2, 0]
    assert d.splits == [3, 0, 3, 2, 0]
    assert d.offsets.tolist() == [3, 3, 6, 8, 8] and d.offsets.dtype == torch.int32
    assert d.expert_ids.tolist() == [0, 0, 0, 2, 2, 2, 3, 3]
    assert d.token_ids.tolist() == [0, 1, 3, 0, 2, 3, 1, 2]  # token order kept
    assert d.order.tolist() == [1, 2, 6, 0, 4, 7, 3, 5]
    assert torch.equal(indices.reshape(-1)[d.order], d.expert_ids)


def test_gather_scatter_and_sum_tokens():
    generator = torch.Generator().manual_seed(0)
    indices = torch.randint(0, 6, (9, 3), generator=generator)
    gates = torch.rand(9, 3, generator=generator)
    x = torch.randn(9, 4, generator=generator)
    d = TokenDispatch(indices, num_experts=6)
    rows = d.gather(x)
    assert torch.equal(rows, x[d.token_ids])
    slots = torch.randn(27, 4, generator=generator)
    assert torch.equal(d.scatter_slots(d.gather_slots(slots)), slots)
    # expert "output" = gate * its input * (expert id + 1): sum_j g_j (e_j + 1) x
    y = d.gather_slots(gates.reshape(-1, 1)) * rows * (d.expert_ids[:, None] + 1)
    expected = (gates[..., None] * (indices[..., None] + 1) * x[:, None]).sum(1)
    torch.testing.assert_close(d.sum_tokens(y), expected)


def test_single_token():
    d = TokenDispatch(torch.tensor([[3, 1]]), num_experts=4)
    assert d.counts.tolist() == [0, 1, 0, 1]
    assert d.token_ids.tolist() == [0, 0]
    y = torch.tensor([[1., 2.], [10., 20.]])  # expert 1 row, then expert 3 row
    torch.testing.assert_close(d.sum_tokens(y), torch.tensor([[11., 22.]]))


def test_sum_tokens_adds_each_tokens_slots():
    indices = torch.tensor([[1, 0], [0, 2], [2, 1]])
    d = TokenDispatch(indices, num_experts=3)
    slots = torch.arange(6.).view(6, 1) * torch.tensor([[1., 10.]])  # slot s -> s, 10s
    y = d.gather_slots(slots)
    torch.testing.assert_close(
        d.sum_tokens(y), torch.tensor([[1., 10.], [5., 50.], [9., 90.]]))
