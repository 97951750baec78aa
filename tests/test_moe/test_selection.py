"""ExpertSelection: the authors' threshold (share in percent > T / k, at least k,
topped up by usage), keep_ratio and keep, on hand-made usage."""
import pytest
import torch

from mod_squad.moe import ExpertSelection

# 8 experts, 1000 picks: shares 40%, 30%, 20%, 5%, 3%, 1%, 0.6%, 0.4%
COUNTS = torch.tensor([400, 300, 200, 50, 30, 10, 6, 4])


def ids(t):
    return t.tolist()


def test_threshold_is_a_percentage_over_k():
    # default threshold 3, k = 2: keep shares > 1.5% -> 40, 30, 20, 5, 3 %
    assert ids(ExpertSelection().select(COUNTS, 2)) == [0, 1, 2, 3, 4]
    # k = 4: > 0.75% -> also the 1% expert, not the 0.6% one
    assert ids(ExpertSelection().select(COUNTS, 4)) == [0, 1, 2, 3, 4, 5]
    # threshold 10, k = 2: > 5% (strictly) -> 40, 30, 20 %
    assert ids(ExpertSelection(threshold=10).select(COUNTS, 2)) == [0, 1, 2]
    # a share (or a running share that does not sum to 1) selects the same
    share = COUNTS.double() / COUNTS.sum() * 0.3
    assert ids(ExpertSelection().select(share, 4)) == [0, 1, 2, 3, 4, 5]
    # the order of the experts does not matter: ids are returned sorted
    perm = torch.tensor([5, 2, 7, 0, 6, 1, 4, 3])
    assert ids(ExpertSelection(threshold=10).select(COUNTS[perm], 2)) == [1, 3, 5]


def test_at_least_k_topped_up_by_usage_ties_to_the_lower_id():
    # threshold 200, k = 4: > 50% -> nobody; topped up to the 4 most used
    assert ids(ExpertSelection(threshold=200).select(COUNTS, 4)) == [0, 1, 2, 3]
    # threshold 100, k = 4: > 25% -> 40% and 30%, topped up by 20% and 5%
    assert ids(ExpertSelection(threshold=100).select(COUNTS, 4)) == [0, 1, 2, 3]
    tied = torch.tensor([5., 1., 1., 1., 0.])
    assert ids(ExpertSelection(threshold=500).select(tied, 2)) == [0, 1]
    assert ids(ExpertSelection(threshold=500).select(tied, 3)) == [0, 1, 2]
    # an unused expert is kept only to reach k
    assert ids(ExpertSelection(threshold=0).select(tied, 2)) == [0, 1, 2, 3]
    assert ids(ExpertSelection(threshold=0).select(tied, 5)) == [0, 1, 2, 3, 4]


def test_keep_ratio_and_keep():
    assert ids(ExpertSelection(keep_ratio=0.5).select(COUNTS, 2)) == [0, 1, 2, 3]
    assert ids(ExpertSelection(keep_ratio=0.3).select(COUNTS, 2)) == [0, 1, 2]  # ceil 2.4
    assert ids(ExpertSelection(keep_ratio=0.1).select(COUNTS, 2)) == [0, 1]  # >= k
    assert ids(ExpertSelection(keep_ratio=1.).select(COUNTS, 2)) == list(range(8))
    perm = torch.tensor([7, 6, 5, 4, 3, 2, 1, 0])
    assert ids(ExpertSelection(keep=3).select(COUNTS[perm], 1)) == [5, 6, 7]
    assert ids(ExpertSelection(keep=1).select(COUNTS, 2)) == [0, 1]  # >= k
    assert ids(ExpertSelection(keep=20).select(COUNTS, 2)) == list(range(8))  # <= E


def test_select_layers_names_the_layer():
    selection = ExpertSelection(keep=2)
    kept = selection.select_layers({'a': (COUNTS, 1), 'b': (COUNTS.flip(0), 1)})
    assert ids(kept['a']) == [0, 1] and ids(kept['b']) == [6, 7]
    with pytest.raises(ValueError, match="Layer 'b'.*no tokens"):
        selection.select_layers({'a': (COUNTS, 1), 'b': (torch.zeros(8), 1)})


def test_errors():
    with pytest.raises(ValueError, match='one of'):
        ExpertSelection(threshold=3, keep=2)
    with pytest.raises(ValueError, match='keep_ratio'):
        ExpertSelection(keep_ratio=0)
    with pytest.raises(ValueError, match='keep must'):
        ExpertSelection(keep=0)
    with pytest.raises(ValueError, match='threshold'):
        ExpertSelection(threshold=-1)
    with pytest.raises(ValueError, match='top_k'):
        ExpertSelection().select(COUNTS, 9)
    with pytest.raises(ValueError, match=r'\(E,\)'):
        ExpertSelection().select(COUNTS[None], 2)
    with pytest.raises(ValueError, match='non-negative'):
        ExpertSelection().select(-COUNTS, 2)
    assert str(ExpertSelection()).startswith('threshold 3')
