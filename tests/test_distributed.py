"""Sharded evaluation with ``torchrun`` on the CPU (gloo): same files as one process, resumable.

Each case launches real processes through ``python -m torch.distributed.run`` running
``tests/dist_worker.py`` and compares the result with an in-process single-process run of the same grid.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("tokenizers")
pytest.importorskip("rich")

from dynamickv.eval import distributed, runner
from evalkit import eval_model, eval_tokenizer, make_samples, run_grid, stable_metrics, stable_record
from tiny import one_thread

WORKER = Path(__file__).resolve().parent / "dist_worker.py"
SAMPLES = 5


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_thread()


def _run_single(out: Path, **kwargs) -> dict:
    tok = eval_tokenizer()
    return run_grid(make_samples(SAMPLES), eval_model(tok), tok, out, windowkv_mode="category", **kwargs)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "run"
    return out, _run_single(out)


def torchrun(out: Path, nproc: int = 2, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    cmd += [str(WORKER), str(out), "--samples", str(SAMPLES), *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _stable(records: list[dict]) -> list[str]:
    """Records without their timings, in file order."""
    return [stable_record(r) for r in records]


_stable_metrics = stable_metrics


def _same_as_single(out: Path, single: tuple[Path, dict]) -> None:
    ref_out, ref_metrics = single
    assert _stable(_lines(out / runner.PREDICTIONS_FILE)) == _stable(
        _lines(ref_out / runner.PREDICTIONS_FILE)
    )
    assert distributed.shard_files(out) == []
    metrics = json.loads((out / runner.METRICS_FILE).read_text())
    assert metrics["complete"]
    assert _stable_metrics(metrics) == _stable_metrics(json.loads(json.dumps(ref_metrics)))
    for name in (runner.SUMMARY_CSV,):
        assert (out / name).read_text() == (ref_out / name).read_text()


def test_two_ranks_write_the_single_process_files(single, tmp_path):
    out = tmp_path / "run"
    proc = torchrun(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _same_as_single(out, single)


def test_killed_rank_then_resume(single, tmp_path):
    out = tmp_path / "run"
    proc = torchrun(out, 2, "--kill-rank", "1", "--kill-after", "7")
    assert proc.returncode != 0
    shards = distributed.shard_files(out)
    assert shards, "an interrupted sharded run keeps its shard files"
    partial = sum(len(_lines(p)) for p in shards)
    total = len(_lines(single[0] / runner.PREDICTIONS_FILE))
    assert 7 <= partial < total
    assert not (out / runner.METRICS_FILE).exists()
    # resume with two ranks: the shards are folded in first, nothing is redone or duplicated
    proc = torchrun(out, 2, "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    _same_as_single(out, single)


def test_single_process_resume_folds_shards(single, tmp_path, monkeypatch):
    """A sharded run interrupted, resumed by one process: same files, only the missing work is done."""
    ref = _lines(single[0] / runner.PREDICTIONS_FILE)
    out = tmp_path / "run"
    out.mkdir()
    (out / runner.CONFIG_FILE).write_text((single[0] / runner.CONFIG_FILE).read_text())
    # rank 0 had samples 0, 2, 4 and rank 1 samples 1, 3; both stopped early, rank 1 mid-line
    per_sample = len(ref) // SAMPLES
    rank0 = ref[: per_sample + 3]
    rank1 = ref[per_sample : per_sample + 2]
    distributed.shard_file(out, 0).write_text("".join(json.dumps(r) + "\n" for r in rank0))
    distributed.shard_file(out, 1).write_text("".join(json.dumps(r) + "\n" for r in rank1) + '{"uid": "cop')
    real, calls = runner._decode, []

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(runner, "_decode", counting)
    _run_single(out, resume=True)
    assert len(calls) == len(ref) - len({runner.record_key(r) for r in rank0 + rank1})
    _same_as_single(out, single)


def test_shard_environment(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    shard = distributed.current_shard()
    assert (shard.rank, shard.world, shard.local_rank, shard.active, shard.main) == (2, 4, 0, True, False)
    assert shard.take(list(range(10))) == [2, 6]
    assert distributed.shard_device("cpu", shard) == "cpu"
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ValueError, match="inconsistent"):
        distributed.current_shard()
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name)
    assert distributed.current_shard() == distributed.Shard()


def test_interleave_takes_the_groups_in_turn():
    items = ["a0", "a1", "a2", "b0", "c0", "c1"]
    assert distributed.interleave(items, key=lambda s: s[0]) == ["a0", "b0", "c0", "a1", "c1", "a2"]
    assert distributed.interleave([], key=len) == []


def test_a_rank_works_task_by_task_in_turn(tmp_path):
    """Samples listed task by task (3 tasks x 4): a rank takes its share round-robin over the tasks,
    so its first three answers already cover every task and a run cut short is not just the first
    tasks. Rank 1 of 2 runs in-process (its barriers are no-ops); that the merged file is still in
    sample order is ``test_two_ranks_write_the_single_process_files``'s check."""
    tok = eval_tokenizer()
    model = eval_model(tok)
    samples = make_samples(12, seed=3)
    for i, sample in enumerate(samples):
        sample.task, sample.index = f"t{i // 4}", i
    kw = dict(methods=["snapkv"], budgets=[40])
    with pytest.raises(FileNotFoundError, match=r"metrics\.json"):  # rank 0 writes it, and has not run
        run_grid(samples, model, tok, tmp_path, shard=distributed.Shard(rank=1, world=2), **kw)
    order = list(dict.fromkeys(r["uid"] for r in _lines(distributed.shard_file(tmp_path, 1))))
    task = {runner.sample_uid(s): s.task for s in samples}
    # interleaved t0 t1 t2 t0 t1 t2 ...; rank 1 takes every other one (in task order: t0 t0 t1 t1 t2 t2)
    assert [task[u] for u in order] == ["t1", "t0", "t2", "t1", "t0", "t2"]
