"""``benchmarks/windowkv_mode_layers.py``, its analysis (``windowkv_mode_study.py``) and the threshold
fit they share with ``windowkv_auto.py``:
the attention features on built score tensors, the fit against a plain transcription of its rule,
the three studies on rows whose answer is known, and bad input through the script."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import pytest
import torch

from benchscripts import load, run
from tiny import tiny_model

wml = load("windowkv_mode_layers")
wms = load("windowkv_mode_study")
wka = load("windowkv_auto")
N = 1024  # tokens: 128 bins of 8; body = bins 1..95 (sinks: bin 0, recency: the last 32 bins)


def _scores(*spikes: tuple[int, float], heads: int = 2, base: float = 0.0) -> torch.Tensor:
    s = torch.full((heads, N), base)
    for pos, value in spikes:
        s[:, pos] += value
    return s


def test_one_spike_in_the_body_is_fully_concentrated():
    f = wml.layer_features(_scores((500, 1.0)))
    assert f["top1_mean"] == pytest.approx(1.0) and f["top1_max"] == pytest.approx(1.0)
    assert f["win16_mean"] == pytest.approx(1.0)
    assert f["entropy_mean"] == pytest.approx(0.0, abs=1e-6)
    assert f["body_mean"] == pytest.approx(1.0) and f["far_mean"] == pytest.approx(1.0)
    assert f["head_mean"] == pytest.approx(0.0)
    assert f["peak_pos"] == 496  # the bin holding token 500


def test_uniform_attention_is_spread_and_sinks_and_recency_leave_the_body():
    f = wml.layer_features(_scores(base=1.0))
    body_bins = 128 - 1 - 32
    assert f["entropy_mean"] == pytest.approx(1.0)
    assert f["top1_mean"] == pytest.approx(1 / body_bins)
    assert f["body_mean"] == pytest.approx(body_bins / 128)
    assert f["far_mean"] == pytest.approx(body_bins / 127)
    assert f["head_mean"] == pytest.approx(15 / 127)  # tokens 8..127 of the 1016 non-sink ones

    sink_and_recent = wml.layer_features(_scores((0, 100.0), (N - 10, 100.0), base=1e-3))
    assert sink_and_recent["body_mean"] < 0.01 and sink_and_recent["far_mean"] < 0.01


def test_attention_on_the_opening_instruction_is_the_head_share():
    f = wml.layer_features(_scores((40, 1.0)))
    assert f["head_mean"] == pytest.approx(1.0) and f["peak_pos"] == 40


def test_mean_and_max_aggregate_over_heads():
    s = torch.zeros(2, N)
    s[0, 500] = 1.0  # head 0: one spike
    s[1] = 1.0  # head 1: uniform
    f = wml.layer_features(s)
    assert f["top1_max"] == pytest.approx(1.0)
    assert f["top1_mean"] == pytest.approx((1.0 + 1 / 95) / 2)


def _reference_fit(rows, stat):
    """The fit's documented rule, written as the plain loop it replaced."""
    best = None
    for thr in sorted({float(r["stats"][stat]) for r in rows}):
        for direction in (">=", "<="):
            hits: dict[str, list[int]] = {}
            for r in rows:
                v = float(r["stats"][stat])
                hit = v >= thr if direction == ">=" else v <= thr
                h = hits.setdefault(r["set"], [0, 0])
                h[0] += hit == (r["expected"] == "localization")
                h[1] += 1
            worst = min(a / n for a, n in hits.values())
            pooled = sum(a for a, _ in hits.values()) / len(rows)
            if best is None or (worst, pooled) > best[0]:
                best = ((worst, pooled), thr, direction)
    return best[1], best[2]


def test_fit_threshold_matches_its_plain_transcription():
    rng = random.Random(0)
    for _ in range(200):
        rows = [
            {
                "set": rng.choice(["ruler", "niah", "multi_news"]),
                "expected": rng.choice(["localization", "aggregation"]),
                "stats": {"x": rng.choice([round(rng.random(), 2), rng.randint(0, 4)])},
            }
            for _ in range(rng.randint(2, 40))
        ]
        assert wka.fit_threshold(rows, "x") == _reference_fit(rows, "x")


def _rows(layers: int, model: str, separating_layer: int) -> list[dict]:
    """QA rows score 1 at ``separating_layer`` and 0 elsewhere; every other row scores 0 there and
    noise elsewhere, so only that layer separates."""
    rng = random.Random(layers)
    out = []
    tasks = [
        ("qa_1", "ruler", "localization"),
        ("niah_single_1", "ruler", "aggregation"),
        ("niah", "niah", "aggregation"),
    ]
    for split in ("dev", "check"):
        for task, set_name, want in tasks:
            for i in range(4):
                feats = []
                for layer in range(layers):
                    v = float(want == "localization") if layer == separating_layer else rng.random()
                    feats.append({c: v for c in wms.COLUMNS[:-1]} | {"peak_pos": 0})
                out.append(
                    {
                        "model": model,
                        "set": set_name,
                        "split": split,
                        "task": task,
                        "uid": f"{task}/{i}@{split}",
                        "expected": want,
                        "layers": feats,
                    }
                )
    return out


def test_study_finds_the_separating_layer_and_a_shared_rule():
    rows = _rows(10, "a", 5) + _rows(20, "b", 10)  # both at relative depth 0.5
    st = wms.study(rows)
    for model, layer in (("a", 5), ("b", 10)):
        best = st["per_model"][model][0]
        assert best["layer"] == layer
        assert best["check"]["ruler"] == 1.0 and best["leave_one_task_out"]["ruler"] == 1.0
    shared = st["shared"][0]
    assert shared["depth"] == 0.5 and shared["key"] == (1.0, 1.0)
    assert st["all_aggregation"]["a"] == {"ruler": 0.5, "niah": 1.0, "multi_news": None}


def test_no_shared_rule_when_the_models_separate_at_different_depths():
    rows = _rows(10, "a", 2) + _rows(10, "b", 8)
    st = wms.study(rows)
    assert st["per_model"]["a"][0]["layer"] == 2 and st["per_model"]["b"][0]["layer"] == 8
    assert st["shared"][0]["key"][0] < 1.0


def _script(*args: str) -> subprocess.CompletedProcess:
    return run("windowkv_mode_layers", *args)


def test_missing_saved_prompts_is_one_clear_error(tmp_path):
    r = _script("--models", "smollm2-135m:4096", "--prompts", str(tmp_path))
    assert r.returncode == 2
    assert "no saved prompts for smollm2-135m" in r.stderr and "Traceback" not in r.stderr


def test_saved_prompts_without_the_protocol_is_one_clear_error(tmp_path):
    ids = torch.arange(10, dtype=torch.int32)
    torch.save(
        {"command": "x", "prompts": [{"task": "qa_1", "ids": {"raw": ids}}]}, tmp_path / "smollm2-135m.pt"
    )
    r = _script("--models", "smollm2-135m:4096", "--prompts", str(tmp_path), "--protocols", "raw,chat")
    assert r.returncode == 2
    assert "no prompts for protocol chat" in r.stderr and "Traceback" not in r.stderr


def test_drop_echo_removes_the_restated_instruction_from_the_tail():
    instruction = list(range(1000, 1020))  # 20 tokens
    body = list(range(2000, 2600))  # 600 distinct tokens
    question = list(range(3000, 3010))
    ids = torch.tensor(instruction + body + instruction + question)
    kept, removed = wml.drop_echo(ids)
    assert removed == 20
    assert kept.tolist() == instruction + body + question


def test_drop_echo_leaves_a_prompt_without_an_echo_alone():
    ids = torch.arange(900)
    kept, removed = wml.drop_echo(ids)
    assert removed == 0 and torch.equal(kept, ids)
    short_echo = torch.tensor(list(range(10)) + list(range(100, 1100)) + list(range(5)))  # 5 < 8 tokens
    assert wml.drop_echo(short_echo)[1] == 0


def test_echo_control_counts_the_qa_prompts_each_best_rule_still_calls_localization():
    rows = [dict(r, protocol="raw") for r in _rows(10, "a", 5) + _rows(20, "b", 10)]
    result = {"rows": rows, "studies": {"raw": wms.study(rows)}}
    echo_rows = []
    for r in rows:
        if r["expected"] == "localization":
            flat = [dict(layer) for layer in r["layers"]]
            for layer in flat:  # without the echo the separating feature falls to the others' value
                for c in wms.COLUMNS[:-1]:
                    layer[c] = 0.0
            echo_rows.append(dict(r, layers=flat, echo_tokens=22))
    lines = wms.echo_control(result, {"rows": echo_rows})
    per_model = [line for line in lines if "depth" not in line and "QA called" in line]
    assert len(per_model) == 2
    assert all(
        "8/8 with the echo, 0/8 without" in line and "removed 22-22 tokens" in line for line in per_model
    )


def test_measure_records_every_layer_of_a_real_prefill_and_drops_nothing():
    model = tiny_model("llama")
    torch.manual_seed(0)
    ids = torch.randint(2, 256, (600,), dtype=torch.int32)
    echo = torch.cat([ids[:20], torch.randint(2, 256, (600,), dtype=torch.int32), ids[:20]])
    prepared = [
        {"task": "qa_1", "uid": "qa_1/0", "expected": "localization", "ids": {"raw": ids, "chat": echo}}
    ]
    rows = wml.measure(model, "tiny", prepared, ["raw", "chat"], echo_control=False)
    assert [r["protocol"] for r in rows] == ["raw", "chat"]
    assert all(len(r["layers"]) == 8 and len(r["layers"][0]) == len(wms.COLUMNS) for r in rows)
    assert rows[0]["tokens"] == 600 and rows[1]["tokens"] == 640
    raw = dict(zip(wms.COLUMNS, rows[0]["layers"][3]))
    assert 0.0 <= raw["entropy_mean"] <= 1.0 and 0.0 < raw["body_mean"] <= 1.0
    control = wml.measure(model, "tiny", prepared, ["chat"], echo_control=True)
    assert control[0]["echo_tokens"] == 20 and control[0]["tokens"] == 620


def test_missing_saved_run_for_the_report_is_one_clear_error(tmp_path):
    r = _script("--report", str(tmp_path / "run.json"))
    assert r.returncode == 2
    assert "no such saved run" in r.stderr and "Traceback" not in r.stderr


def test_a_rule_carries_to_another_model_only_where_both_separate_at_its_depth():
    alike = wms.study(_rows(10, "a", 5) + _rows(20, "b", 10))  # both at relative depth 0.5
    a_to_b = next(t for t in alike["transfer"] if t["source"] == "a")
    assert (a_to_b["target"], a_to_b["source_layer"], a_to_b["target_layer"]) == ("b", 5, 10)
    assert a_to_b["sets"]["ruler"] == 1.0 and a_to_b["pooled"] == 1.0
    assert (a_to_b["qa_called"], a_to_b["qa"]) == (8, 8)
    assert a_to_b["top_ranks_carried"][0] == 1
    apart = wms.study(_rows(10, "a", 2) + _rows(10, "b", 8))
    a_to_b = next(t for t in apart["transfer"] if t["source"] == "a")
    assert a_to_b["target_layer"] == 2  # b's noise there never reaches a's threshold
    assert a_to_b["qa_called"] == 0 and a_to_b["sets"]["ruler"] == 0.5


def _saved_run(path: Path, rows: list[dict], command: str) -> None:
    packed = [
        dict(r, protocol="raw", layers=[[f[c] for c in wms.COLUMNS] for f in r["layers"]]) for r in rows
    ]
    meta = {"date": "2026-11-30", "machine": "test", "transformers": "x", "command": command}
    path.write_text(json.dumps({"meta": meta, "rows": packed}))


def test_report_of_several_runs_analyses_them_as_one(tmp_path):
    _saved_run(tmp_path / "two.json", _rows(10, "a", 5) + _rows(20, "b", 10), "measure a and b")
    _saved_run(tmp_path / "third.json", _rows(12, "c", 6), "measure c later")
    r = _script("--report", f"{tmp_path / 'two.json'},{tmp_path / 'third.json'}")
    assert r.returncode == 0, r.stderr
    report = (tmp_path / "two.txt").read_text()
    assert "and the rows of: measure c later" in report
    assert "c, best single layers" in report and "a L5 -> c L6" in report
    assert (tmp_path / "two.png").is_file() and (tmp_path / "two_study.json").is_file()
    missing = _script("--report", f"{tmp_path / 'two.json'},{tmp_path / 'gone.json'}")
    assert missing.returncode == 2 and "no such saved run" in missing.stderr
    twice = _script("--report", f"{tmp_path / 'third.json'},{tmp_path / 'third.json'}")
    assert twice.returncode == 2 and "is in more than one of the runs" in twice.stderr
    assert "Traceback" not in twice.stderr
