"""``benchmarks/kvpress_kept.py``: kvpress's kept positions are read back from the keys it kept, by
finding each one in the uncompressed prefill's keys, and never guessed."""

from __future__ import annotations

import pytest
import torch

from benchscripts import load

kept = load("kvpress_kept")
peer = load("kvpress_quality_peer")


def test_each_kept_key_is_found_at_its_position_per_head():
    torch.manual_seed(0)
    full = torch.randn(2, 10, 4)  # [heads, positions, head_dim]
    chosen = [[7, 0, 3], [9, 8, 1]]  # a press gathers in score order, not position order
    keys = torch.stack([full[h, idx] for h, idx in enumerate(chosen)])
    heads, unmatched = kept.positions_of(keys, full)
    assert heads == [[0, 3, 7], [1, 8, 9]] and unmatched == 0


def test_a_key_found_nowhere_or_twice_is_counted_not_placed():
    torch.manual_seed(1)
    full = torch.randn(1, 6, 4)
    full[0, 5] = full[0, 2]  # two positions with the same key
    keys = torch.stack([full[0, 1], full[0, 2], torch.full((4,), 9.0)]).unsqueeze(0)
    heads, unmatched = kept.positions_of(keys, full)
    assert heads == [[1]] and unmatched == 2


@pytest.mark.parametrize("budget", [64, 128, 256, 1024])
def test_the_matched_ratio_makes_kvpress_keep_exactly_the_budget(budget):
    """kvpress keeps int(n * (1 - ratio)) tokens (round(...) where PyramidKV falls back to SnapKV).
    With 1 - B / n that is B - 1 for some n; the matched ratio gives B for every prompt length."""
    matched_ratio = peer.matched_ratio
    naive = [n for n in range(budget + 1, 140_000) if int(n * (1 - peer.naive_ratio(budget, n))) != budget]
    assert naive  # the rounding the earlier runs had: it happens, so this test can fail
    for n in range(budget + 1, 140_000):
        kept = n * (1 - matched_ratio(budget, n))
        assert int(kept) == budget and round(kept) == budget, n
    assert matched_ratio(budget, budget) == matched_ratio(budget, budget - 10) == 0.0  # nothing to drop
