"""``benchmarks/paired_compare.py``: the sample-by-sample comparison the quality write-ups quote, run
as a script on a hand-made run folder, its saved JSON, and its forest plot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "paired_compare.py"


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
    res = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            str(run),
            "--a",
            "A",
            "--b",
            "B",
            "--out",
            str(out),
            "--plot",
            str(png),
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    (row,) = json.loads(out.read_text())["rows"]
    assert row["samples"] == 4  # only the samples both answered
    assert row["a_minus_b"] == (50 + -25) / 2  # the mean over tasks of each task's mean difference
    assert (row["a_higher"], row["a_lower"]) == (1, 1)
    assert row["ci95"][0] <= row["a_minus_b"] <= row["ci95"][1]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    redraw = tmp_path / "again.png"
    res = subprocess.run(
        [sys.executable, str(SCRIPT), "--from-json", str(out), "--plot", str(redraw)],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0 and redraw.is_file(), res.stderr


def test_missing_arguments_are_one_usage_error(tmp_path):
    res = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True)
    assert res.returncode == 2
    assert "give one or more runs with --a and --b, or --from-json" in res.stderr
    assert "Traceback" not in res.stderr
