"""``dynamickv bench`` loses nothing to an interruption: ``--out`` holds every finished row, a rerun
without ``--resume`` is refused rather than overwriting them, and ``--resume`` measures only the rows
that are missing, from a run made with the same settings. Through the CLI's own entry code."""

from __future__ import annotations

import json

import pytest

from dynamickv import bench, cli

ARGS = ["bench", "--config", "tiny", "--device", "cpu", "--lengths", "128,192", "--steps", "2", "--budget", "48",
        "--methods", "fullkv,snapkv"]  # fmt: skip


def call(capsys, *args) -> tuple[int, str]:
    code = cli.run([str(a) for a in args])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, err


@pytest.fixture
def measured(monkeypatch):
    """The (method, tokens) of every measured row (warm-up passes excluded); ``stop_after`` rows, a
    Ctrl-C."""
    real, seen = bench.measure, []

    def measure(model, method, budget, n, *args, **kwargs):
        if "eager_steps" in kwargs:  # a measured row, not the warm-up
            if len(seen) == measure.stop_after:
                raise KeyboardInterrupt
            seen.append((method, n))
        return real(model, method, budget, n, *args, **kwargs)

    measure.stop_after = None
    monkeypatch.setattr(bench, "measure", measure)
    return measure, seen


def test_interrupted_bench_keeps_its_rows_and_resumes(capsys, tmp_path, measured):
    measure, seen = measured
    out = tmp_path / "b.json"
    measure.stop_after = 3
    code, err = call(capsys, *ARGS, "--out", out)
    assert code == 130 and "interrupted" in err
    saved = json.loads(out.read_text())
    assert saved["complete"] is False
    assert [(r["method"], r["tokens"]) for r in saved["rows"]] == seen == [
        ("fullkv", 128), ("snapkv", 128), ("fullkv", 192)]  # fmt: skip

    code, err = call(capsys, *ARGS, "--out", out)  # not overwritten unsaid
    assert code == 2 and "holds an interrupted bench (3 rows measured); pass --resume" in err
    assert json.loads(out.read_text()) == saved

    code, err = call(capsys, *ARGS, "--budget", "64", "--out", out, "--resume")
    assert code == 2 and "other settings (budget: 48 there, 64 here)" in err

    measure.stop_after, seen[:] = None, []
    code, err = call(capsys, *ARGS, "--out", out, "--resume")
    assert code == 0, err
    assert seen == [("snapkv", 192)]  # only the missing row was measured
    done = json.loads(out.read_text())
    assert done["complete"] is True and len(done["meta"]["resumed"]) == 1
    assert done["rows"][:3] == saved["rows"] and done["rows"][3]["kept_mean"] == 48
    assert done["meta"]["date"] == saved["meta"]["date"]

    seen[:] = []  # a finished run: resuming measures nothing, a plain rerun starts afresh
    assert call(capsys, *ARGS, "--out", out, "--resume")[0] == 0 and seen == []
    assert call(capsys, *ARGS, "--out", out)[0] == 0 and len(seen) == 4


def test_resume_refusals(capsys, tmp_path):
    out = tmp_path / "b.json"
    out.write_text("{not json")
    code, err = call(capsys, *ARGS, "--out", out, "--resume")
    assert code == 2 and f"cannot resume from {out}: it is not a bench result" in err
    out.write_text(json.dumps([1, 2]))
    code, err = call(capsys, *ARGS, "--out", out, "--resume")
    assert code == 2 and "not a dynamickv bench result" in err


def test_interrupted_serving_bench_resumes(capsys, tmp_path, monkeypatch):
    """The serving benchmark (--batch) keeps each finished (method, length) and resumes the rest."""
    from dynamickv import bench_batch

    real, seen = bench_batch.method_rows, []

    def method_rows(model, method, budget, n, *args):
        if len(seen) == method_rows.stop_after:
            raise KeyboardInterrupt
        seen.append((method, n))
        return real(model, method, budget, n, *args)

    method_rows.stop_after = 1
    monkeypatch.setattr(bench_batch, "method_rows", method_rows)
    out = tmp_path / "s.json"
    args = [*ARGS[:6], "128", "--steps", "2", "--budget", "48", "--methods", "fullkv,snapkv", "--batch", "2"]
    code, err = call(capsys, *args, "--out", out)
    assert code == 130
    saved = json.loads(out.read_text())
    assert saved["complete"] is False and saved["meta"]["done"] == [["fullkv", 128]]
    assert call(capsys, *args, "--out", out)[0] == 2  # an interrupted run is not overwritten unsaid
    method_rows.stop_after, seen[:] = None, []
    code, err = call(capsys, *args, "--out", out, "--resume")
    assert code == 0, err
    assert seen == [("snapkv", 128)]
    done = json.loads(out.read_text())
    assert done["complete"] and done["meta"]["done"] == [["fullkv", 128], ["snapkv", 128]]
    assert done["rows"][: len(saved["rows"])] == saved["rows"] and len(done["rows"]) > len(saved["rows"])
