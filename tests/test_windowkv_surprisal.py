"""``benchmarks/windowkv_surprisal.py``: each statistic on built surprisal and attention, the
chunked surprisal against the plain one, the report, and bad input through the script."""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch

from benchscripts import load, run

ws = load("windowkv_surprisal")
N = 1024  # body: tokens 8 .. N - 256


def _surprisal(spikes: list[int]) -> torch.Tensor:
    s = torch.ones(N)
    s[spikes] = 9.0
    return s


def _attention(on: list[int], layers: int = 3) -> torch.Tensor:
    a = torch.full((layers, N), 1e-4)
    a[:, on] = 1.0
    return a / a.sum(-1, keepdim=True)


def test_evidence_is_surprising_when_the_request_looks_at_the_spikes():
    spikes = list(range(300, 316))
    s = _surprisal(spikes)
    on_spikes = ws.statistics(s, _attention(spikes))
    elsewhere = ws.statistics(s, _attention(list(range(500, 516))))
    body = s[8 : N - 256]
    assert math.isclose(on_spikes["evidence_z"], float((9.0 - body.mean()) / body.std()), rel_tol=1e-5)
    assert math.isclose(elsewhere["evidence_z"], float((1.0 - body.mean()) / body.std()), rel_tol=1e-5)
    assert on_spikes["evidence_w"] > 0 > elsewhere["evidence_w"]
    assert on_spikes["body_mean"] == elsewhere["body_mean"] == float(body.mean())


def test_sinks_and_the_request_are_not_evidence():
    """Attention on the first 8 and the last 256 tokens is left out of the body."""
    s = _surprisal([2, 3, N - 10])
    stats = ws.statistics(s, _attention([2, 3, N - 10, 400]))
    assert stats["body_mean"] == 1.0 and stats["onsets_per_1k"] == 0.0


def test_onsets_count_bumps_at_least_gap_apart():
    body = torch.zeros(1000)
    for start in (100, 130, 400, 700):  # 130 is 30 after 100: the same onset
        body[start : start + 8] = 5.0
    assert ws.onsets(body) == 3
    assert ws.onsets(body, gap=16) == 4
    assert ws.onsets(torch.zeros(1000)) == 0


def test_token_surprisal_is_minus_log_p_of_the_next_token_in_any_chunking():
    torch.manual_seed(0)
    vocab, d, n = 11, 5, 9
    model = SimpleNamespace(lm_head=torch.nn.Linear(d, vocab))
    hidden, ids = torch.randn(n, d), torch.randint(0, vocab, (n,))
    logp = model.lm_head(hidden).log_softmax(-1)
    want = torch.cat([torch.zeros(1), -logp[torch.arange(n - 1), ids[1:]]])
    with torch.no_grad():
        for chunk in (1, 3, 1024):
            assert torch.allclose(ws.token_surprisal(model, hidden, ids, chunk=chunk), want, atol=1e-6)


def _row(set_: str, task: str, expected: str, value: float, split: str) -> dict:
    stats = dict.fromkeys(ws.STATISTICS, 0.0) | {"evidence_z": value}
    return {"set": set_, "task": task, "expected": expected, "split": split, "model": "m", "uid": task,
            "stats": stats}  # fmt: skip


def test_report_fits_on_dev_and_counts_others_inside_the_qa_range():
    rows = []
    for split in ("dev", "check"):
        rows += [_row("ruler", "qa_1", "localization", -1.0 - i / 10, split) for i in range(2)]
        rows += [_row("ruler", "vt", "aggregation", 2.0 + i, split) for i in range(3)]
        rows += [
            _row("niah", "niah", "aggregation", 1.0, split),
            _row("multi_news", "multi_news", "aggregation", 0.5, split),
        ]
    text = ws.report(rows, "cmd")
    line = next(x for x in text.splitlines() if "evidence_z" in x)
    assert "check 100.0% (5/5)/100.0% (1/1)/100.0% (1/1)" in line
    assert "QA range -1.10..-1.00 holds 0/10 others" in line


def test_missing_saved_prompts_is_one_clear_error(tmp_path):
    r = run("windowkv_surprisal", "--prompts", str(tmp_path), "--out", str(tmp_path / "o.json"))
    assert r.returncode == 2
    assert "no saved prompts for smollm2-135m" in r.stderr and "Traceback" not in r.stderr
