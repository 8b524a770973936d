"""``benchmarks/windowkv_selfask.py``: the agreement, the calibrated and hindsight rules on rows whose
answer is known, and bad input through the script."""

from __future__ import annotations

from benchscripts import load, run

wsa = load("windowkv_selfask")


def _row(set_: str, task: str, expected: str, margin: float, model: str = "m") -> dict:
    return {"set": set_, "task": task, "expected": expected, "margin": margin, "model": model, "uid": task}


def _rows() -> list[dict]:
    """QA's margins 2.0-2.3, every other prompt's 0.5-0.8: all above 0 (the model says A to all),
    separated at any threshold between 0.8 and 2.0."""
    rows = [_row("ruler", "qa_1", "localization", 2.0 + i / 10) for i in range(4)]
    rows += [_row("ruler", "niah_single_1", "aggregation", 0.5 + i / 10) for i in range(4)]
    rows += [_row("ruler", "cwe", "aggregation", 0.6 + i / 10) for i in range(2)]
    rows += [_row("niah", "niah", "aggregation", 0.7) for _ in range(3)]
    rows += [_row("multi_news", "multi_news", "aggregation", 0.8) for _ in range(2)]
    return rows


def test_agreement_counts_the_mode_each_margin_gives():
    rows = _rows()
    assert wsa.agreement(rows) == {"ruler": 40.0, "niah": 0.0, "multi_news": 0.0}  # all called localization
    assert wsa.agreement(rows, 1.0) == {"ruler": 100.0, "niah": 100.0, "multi_news": 100.0}
    assert wsa.agreement(rows, 5.0) == {"ruler": 60.0, "niah": 100.0, "multi_news": 100.0}


def test_hindsight_threshold_separates_where_the_margins_do():
    t, scores = wsa.best_threshold(_rows())
    assert 0.8 < t < 2.0
    assert scores == {"ruler": 100.0, "niah": 100.0, "multi_news": 100.0}


def test_report_gives_the_three_rules_per_model():
    rows = _rows() + [dict(r, model="n", margin=-r["margin"]) for r in _rows()]
    text = wsa.report(rows, {"m": 1.0, "n": 0.0}, "cmd")
    assert "# cmd" in text
    m, n = text.split("\nm: ")[1].split("\nn: ")
    # m: the letter alone calls everything localization; its bias of 1.0 separates the categories
    assert "training-free): 40.0 / 0.0 / 0.0" in m
    assert "bias +1.000 subtracted, training-free): 100.0 / 100.0 / 100.0" in m
    assert "QA called localization: 4 / 4; needle prompts called localization: 7 / 7" in m
    assert "QA called localization: 4 / 4; needle prompts called localization: 0 / 7" in m
    # n: QA's margins are now the lowest, so nothing above the bias of 0 is QA
    assert "training-free): 60.0 / 100.0 / 100.0" in n


def _script(*args: str):
    return run("windowkv_selfask", *args)


def test_missing_saved_prompts_is_one_clear_error(tmp_path):
    r = _script("--prompts", str(tmp_path), "--models", "smollm2-135m", "--out", str(tmp_path / "o.json"))
    assert r.returncode == 2
    assert "no saved prompts for smollm2-135m" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o.json").exists()


def test_bad_tail_is_one_clear_error(tmp_path):
    r = _script("--prompts", str(tmp_path), "--tail", "0", "--out", str(tmp_path / "o.json"))
    assert r.returncode == 2
    assert "--tail must be positive" in r.stderr and "Traceback" not in r.stderr
