"""``benchmarks/paired_compare.py``: the sample-by-sample comparison the quality write-ups quote, run
as a script on a hand-made run folder, its saved JSON, and its forest plot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "paired_compare.py"


def _script(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True)


def _run_folder(tmp_path: Path) -> Path:
    run = tmp_path / "smol"
    run.mkdir()
    rows = []
    # task a: A wins one sample of two (+100, 0); task b: A loses one of two (0, -50)
    for task, uid, sa, sb in (
        ("a", "a/0", 100, 0),
        ("a", "a/1", 50, 50),
        ("b", "b/0", 0, 50),
        ("b", "b/1", 70, 70),
    ):
        rows.append({"uid": uid, "task": task, "method": "A", "budget": 64, "score": sa})
        rows.append({"uid": uid, "task": task, "method": "B", "budget": 64, "score": sb})
    rows.append({"uid": "a/2", "task": "a", "method": "A", "budget": 64, "score": 100})  # B lacks it
    (run / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def test_differences_counts_and_plot(tmp_path):
    run = _run_folder(tmp_path)
    out, png = tmp_path / "cmp.json", tmp_path / "cmp.png"
    res = _script(run, "--a", "A", "--b", "B", "--out", out, "--plot", png)
    assert res.returncode == 0, res.stderr
    (row,) = json.loads(out.read_text())["rows"]
    assert row["samples"] == 4  # only the samples both answered
    assert row["a_minus_b"] == (50 + -25) / 2  # the mean over tasks of each task's mean difference
    assert (row["a_higher"], row["a_lower"]) == (1, 1)
    assert row["ci95"][0] <= row["a_minus_b"] <= row["ci95"][1]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    redraw = tmp_path / "again.png"
    res = _script("--from-json", out, "--plot", redraw)
    assert res.returncode == 0 and redraw.is_file(), res.stderr


def test_missing_arguments_are_one_usage_error(tmp_path):
    res = _script()
    assert res.returncode == 2
    assert "give one or more runs with --a and --b, or --from-json" in res.stderr
    assert "Traceback" not in res.stderr


def test_kvpress_answers_are_scored_with_the_runs_scorer(tmp_path):
    """``--peer``: kvpress's answers, scored here sample by sample (RULER's string match), compared
    with one of ours on the samples both answered."""
    run = tmp_path / "ruler"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"benchmark": "ruler"}))
    ours = [
        {
            "uid": "n/0",
            "task": "niah_single_1",
            "method": "A",
            "budget": 64,
            "score": 100,
            "answers": ["123"],
        },
        {"uid": "n/1", "task": "niah_single_1", "method": "A", "budget": 64, "score": 0, "answers": ["456"]},
        {
            "uid": "q/0",
            "task": "qa_1",
            "method": "A",
            "budget": 64,
            "score": 100,
            "answers": ["Paris", "paris"],
        },
    ]
    (run / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ours))
    peer = [
        {"uid": "n/0", "task": "niah_single_1", "method": "kvpress-x", "budget": 64, "prediction": "no idea"},
        {
            "uid": "n/1",
            "task": "niah_single_1",
            "method": "kvpress-x",
            "budget": 64,
            "prediction": "it is 456.",
        },
        {"uid": "q/0", "task": "qa_1", "method": "kvpress-x", "budget": 64, "prediction": "Paris"},
        {"uid": "z/9", "task": "qa_1", "method": "kvpress-x", "budget": 64, "prediction": "not in the run"},
    ]
    (tmp_path / "peer.jsonl").write_text("".join(json.dumps(r) + "\n" for r in peer))
    out = tmp_path / "cmp.json"
    res = _script(run, "--peer", tmp_path / "peer.jsonl", "--a", "A", "--b", "kvpress-x", "--out", out)
    assert res.returncode == 0, res.stderr
    (row,) = json.loads(out.read_text())["rows"]
    assert row["samples"] == 3
    # niah_single_1: +100 and -100 (mean 0); qa_1: kvpress found Paris too (0)
    assert row["a_minus_b"] == 0 and (row["a_higher"], row["a_lower"]) == (1, 1)
