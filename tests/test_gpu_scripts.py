"""The GPU measurement scripts under ``benchmarks/``: they parse, and ``step`` (``gpu_common.sh``) runs a
step once, skips one that cannot finish in the time left, and skips one an earlier call finished.

These scripts run on a machine lent for minutes at a time; a call that dies on a syntax error or
re-runs finished work wastes the session's device time, so the shared step logic is tested here."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("*.sh")))
def test_every_gpu_script_parses(script):
    done = subprocess.run(["bash", "-n", str(BENCH / script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_step_runs_once_skips_what_cannot_finish_and_what_is_done(tmp_path):
    env = dict(
        os.environ,
        OUT=str(tmp_path / "out"),
        CARRY=str(tmp_path / "carry"),
        RUNS=str(tmp_path / "runs"),
        DYNAMICKV_CACHE=str(tmp_path / "cache"),
        PIECES=str(tmp_path / "pieces"),
        DEADLINE="300",
    )
    script = f"""source {BENCH / "gpu_common.sh"}
step first 1 bash -c 'echo ran >> {tmp_path}/first.txt'
step first 1 bash -c 'echo ran >> {tmp_path}/first.txt'
step long 100000 true
step failing 1 false
echo end
"""
    done = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, env=env, cwd=BENCH.parent, timeout=120
    )
    assert done.stdout.endswith("end\n"), done.stderr  # a failing step does not stop the script
    assert (tmp_path / "first.txt").read_text() == "ran\n"  # the second call found it finished
    steps = (tmp_path / "runs" / "steps.txt").read_text().splitlines()
    assert steps[0].startswith("first rc=0 ")
    assert steps[1].startswith("long skipped")
    assert steps[2].startswith("failing rc=1 ")
    assert len(steps) == 3
