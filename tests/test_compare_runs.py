"""``benchmarks/compare_runs.py``: two runs of the same samples compared record by record (the
check that a decoder change left the kept tokens, answers and scores alone), on hand-made runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "compare_runs.py"


def _script(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True)


def _run(tmp_path: Path, name: str, rows: list[dict], digest: str = "d1") -> Path:
    run = tmp_path / name
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"samples_digest": digest}))
    (run / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def _row(uid: str, method: str, budget: int | None, kept: list, prediction: str, score: float) -> dict:
    return {
        "uid": uid,
        "method": method,
        "budget": budget,
        "kept_tokens_per_layer_head": kept,
        "prediction": prediction,
        "score": score,
    }


def test_counts_what_changed_per_cell(tmp_path):
    old = _run(
        tmp_path,
        "old",
        [
            _row("a/0", "snapkv", 64, [[3, 3]], " 42", 100.0),
            _row("a/1", "snapkv", 64, [[3, 3]], " 7 and more", 100.0),
            _row("a/0", "fullkv", None, [[9, 9]], " 42", 100.0),
            _row("a/2", "snapkv", 64, [[3, 3]], " 1", 0.0),  # only in the old run
        ],
    )
    new = _run(
        tmp_path,
        "new",
        [
            _row("a/0", "snapkv", 64, [[4, 2]], " 41", 0.0),  # other tokens kept, answer and score moved
            _row("a/1", "snapkv", 64, [[3, 3]], " 7 and less", 100.0),  # late text differs, score same
            _row("a/0", "fullkv", None, [[9, 9]], " 42", 100.0),
        ],
    )
    out = tmp_path / "cmp.json"
    res = _script(old, new, "--out", out)
    assert res.returncode == 0, res.stderr
    result = json.loads(out.read_text())
    assert (result["only_old"], result["only_new"]) == (1, 0)
    snap = result["cells"]["snapkv@64"]
    assert (snap["both"], snap["kept"], snap["prediction"], snap["score"]) == (2, 1, 0, 1)
    assert snap["mean_score_change"] == -50.0
    full = result["cells"]["fullkv@full"]
    assert (full["both"], full["kept"], full["prediction"], full["score"]) == (1, 1, 1, 1)
    assert result["total"] == {"both": 3, "kept": 2, "prediction": 1, "score": 2}
    assert "snapkv@64" in res.stdout


def test_runs_of_other_samples_or_no_run_are_one_line_errors(tmp_path):
    a = _run(tmp_path, "a", [], digest="d1")
    b = _run(tmp_path, "b", [], digest="d2")
    res = _script(a, b)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        f"error: {a} and {b} are not runs of the same samples (their samples_digest differs)"
    ]
    res = _script(a, tmp_path / "missing")
    assert res.returncode == 2 and "has no config.json" in res.stderr and "Traceback" not in res.stderr
