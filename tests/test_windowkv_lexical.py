"""``benchmarks/windowkv_lexical.py``: each statistic on built token sequences, and the shared
threshold study on built rows."""

from __future__ import annotations

import math

import pytest

from benchscripts import load

wl = load("windowkv_lexical")
FRAME = [0] * wl.SINKS, [1] * wl.RECENT  # the sinks and the request, left out of the body


def _stats(body: list[int]) -> dict[str, float]:
    return wl.statistics(FRAME[0] + body + FRAME[1])


def test_a_repeated_text_brings_nothing_new_and_a_text_of_new_words_everything():
    repeated = _stats([10 + i % 50 for i in range(2048)])  # one 50-token sentence over and over
    fresh = _stats(list(range(100, 2148)))  # every token new
    assert repeated["novelty"] == repeated["early_novelty"] == 0.0 and repeated["chunk_jaccard"] == 1.0
    assert fresh["novelty"] == fresh["early_novelty"] == 1.0 and fresh["chunk_jaccard"] == 0.0
    assert fresh["heaps"] == pytest.approx(1.0) and repeated["heaps"] == pytest.approx(0.0, abs=1e-9)


def test_recurrence_reads_only_tokens_seen_two_to_four_times():
    body = list(range(1000, 3000))
    body[100], body[150] = 7, 7  # a rare token repeated 50 tokens later
    body[400], body[1400] = 8, 8  # and one 1000 tokens later
    s = _stats(body)
    assert s["recur_near"] == 0.5  # one repeat of two within 256 tokens
    assert s["recur_log_median"] == pytest.approx(math.log10((50 + 1000) / 2))
    assert _stats(list(range(1000, 3000)))["recur_near"] == 0.0  # no repeats at all


def test_shared_study_fits_one_threshold_for_every_model():
    rows = []
    for model in ("a", "b"):
        for i in range(8):
            qa = i < 2
            for split in ("dev", "check"):
                rows.append({"model": model, "set": "ruler", "split": split, "task": "qa" if qa else f"t{i}",
                             "uid": f"{model}{i}{split}", "expected": "localization" if qa else "aggregation",
                             "stats": {"x": 0.9 if qa else 0.1 + 0.01 * i}})  # fmt: skip
    study = wl.shared_study(rows, "x")
    assert study["direction"] == ">=" and 0.17 < study["threshold"] <= 0.9
    for model in ("a", "b"):
        assert study["models"][model]["check"]["sets"]["ruler"]["rate"] == 1.0
