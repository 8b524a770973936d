"""``benchmarks/quality_peer.py`` and the resume of ``benchmarks/kvpress_quality_peer.py``: a peer's
answers are scored on the samples every configuration answered, two peers of one run are compared
record by record, and a shard stopped mid-write resumes without losing or mangling a record."""

from __future__ import annotations

import json

import pytest

from benchscripts import load, run
from dynamickv.eval.base import Sample

qp = load("quality_peer")
kqp = load("kvpress_quality_peer")

SAMPLES = [
    Sample(
        task="niah_single_1",
        index=i,
        prompt="p",
        answers=[f"{i}{i}{i}"],
        max_new_tokens=8,
        category="retrieval",
    )
    for i in range(4)
]
CONFIG = {"benchmark": "ruler", "model": "m", "protocol": "raw"}


def _record(i: int, method: str, budget: int | None, prediction: str) -> dict:
    return {
        "uid": f"niah_single_1/{i}",
        "task": "niah_single_1",
        "method": method,
        "budget": budget,
        "prediction": prediction,
    }


def _write(path, records) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.fixture
def built_run(tmp_path, monkeypatch):
    """A run folder of four RULER samples (the samples are given, not rebuilt from a tokenizer)."""
    monkeypatch.setattr(qp, "_samples_of_run", lambda run: (CONFIG, None, SAMPLES))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    _write(run_dir / "predictions.jsonl", [_record(i, "fullkv", None, f"{i}{i}{i}") for i in range(4)])
    return run_dir


def test_diff_counts_changed_answers_and_scores_only_the_shared_samples(built_run, tmp_path):
    old, new = tmp_path / "old.jsonl", tmp_path / "new.jsonl"
    # old: samples 0-2 at B = 128 (0 and 1 right); new: all four (0, 1 and 3 right; 2 changed, still wrong)
    _write(
        old,
        [
            _record(0, "kvpress-snapkv", 128, "000"),
            _record(1, "kvpress-snapkv", 128, "111"),
            _record(2, "kvpress-snapkv", 128, "no"),
        ],
    )
    _write(
        new,
        [
            _record(0, "kvpress-snapkv", 128, "000"),
            _record(1, "kvpress-snapkv", 128, "111"),
            _record(2, "kvpress-snapkv", 128, "nothing"),
            _record(3, "kvpress-snapkv", 128, "333"),
            _record(0, "kvpress-snapkv", 64, "000"),
        ],
    )
    out = tmp_path / "d" / "diff.json"
    result = qp.diff(built_run, [old], [new], out)
    cell = result["cells"]["kvpress-snapkv@128"]
    assert cell["samples"] == 3 and cell["equal_answers"] == 2
    assert cell["old"] == cell["new"] == pytest.approx(200 / 3, abs=0.01)  # the scorer rounds
    assert set(result["cells"]) == {"kvpress-snapkv@128"}  # B = 64 is in the new peer only
    assert json.loads(out.read_text())["cells"] == result["cells"]


def test_score_writes_its_tables_where_it_is_told_and_leaves_the_run_alone(built_run, tmp_path):
    peer = tmp_path / "peer.jsonl"
    _write(
        peer,
        [_record(i, "kvpress-none", None, f"{i}{i}{i}") for i in range(4)]
        + [_record(i, "kvpress-snapkv", 128, "000") for i in range(4)],
    )
    result = qp.score(built_run, [peer], tmp_path / "tables")
    assert result["methods"]["kvpress-snapkv"]["budgets"]["128"]["average"] == pytest.approx(25.0)
    assert result["fullkv_agreement"] == {"equal": 4, "of": 4}
    assert (tmp_path / "tables" / "comparison.md").is_file()
    assert not (built_run / "comparison.md").exists() and not (built_run / "peer_metrics.json").exists()


def test_a_shard_stopped_mid_write_resumes_without_its_half_record(tmp_path):
    out = tmp_path / "peer.0.jsonl"
    whole = _record(0, "kvpress-none", None, "000")
    out.write_text(json.dumps(whole) + "\n" + json.dumps(_record(1, "kvpress-none", None, "111"))[:30])
    assert kqp.done_records(out) == {("niah_single_1/0", "kvpress-none", None)}
    assert out.read_text() == json.dumps(whole) + "\n"  # the next record starts on a line of its own
    assert kqp.done_records(tmp_path / "absent.jsonl") == set()


def test_diff_is_a_subcommand_of_the_script():
    done = run("quality_peer", "diff", "--help")
    assert done.returncode == 0 and "--old" in done.stdout and "--new" in done.stdout


def test_kept_exactly_counts_records_that_held_b_in_every_compressed_layer():
    def rec(method, budget, kept, n=100, **extra):
        return {
            "method": method,
            "budget": budget,
            "kept_tokens_per_layer": kept,
            "compressed_tokens": n,
            **extra,
        }

    peer = [
        rec("kvpress-snapkv", 8, [8, 8, 8]),
        rec("kvpress-snapkv", 8, [8, 7, 8]),  # the old ratio's missing token
        rec("kvpress-snapkv", 8, [100, 8, 100]),  # a Gemma 3: sliding layers hold the whole prompt
        rec("kvpress-adakv", 8, [100, 100, 100]),  # masked, nothing dropped: not exact
        rec("kvpress-pyramidkv", 8, [12, 8, 4], pyramid=True),  # a pyramid: left out
        rec("kvpress-pyramidkv", 8, [8, 8, 8], pyramid=False),
        rec("kvpress-none", None, [100, 100, 100]),
    ]
    assert qp.kept_exactly(peer) == {
        "kvpress-snapkv@8": [2, 3],
        "kvpress-adakv@8": [0, 1],
        "kvpress-pyramidkv@8": [1, 1],
    }
