"""The command line: one-line errors for bad input, and the JSON report on the real default model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from dynamickv.methods import METHODS
from dynamickv.report import needle_prompt


def run(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "dynamickv.cli", *args], capture_output=True, text=True, env=env
    )


def test_methods_lists_every_method():
    out = run("methods")
    assert out.returncode == 0
    names = [line.split()[0] for line in out.stdout.splitlines()]
    assert names == list(METHODS)
    assert {"fullkv", "snapkv-decay", "dynamickv", "dynamickv-robust", "windowkv", "adakv"} <= set(names)
    assert [line.split()[0] for line in out.stdout.splitlines() if "(recommended)" in line] == [
        "dynamickv-auto"
    ]


def test_methods_catalog_is_the_registry():
    """`dynamickv methods` prints a generated copy of the registry (it needs no torch): they agree."""
    from dynamickv.catalog import CATALOG
    from dynamickv.methods import describe_methods

    assert describe_methods() == CATALOG, "run `python -m dynamickv.catalog` after changing a method"
    out = run("methods", "--json")
    assert out.returncode == 0 and json.loads(out.stdout) == describe_methods()
    assert sum(m["recommended"] for m in CATALOG) == 1


@pytest.mark.parametrize("args", [["--help"], ["methods"], ["methods", "--json"], ["eval", "--help"]])
def test_listing_commands_never_import_torch(args):
    """`--help` and `methods` start fast: nothing on their path imports torch or transformers."""
    code = (
        "import sys; from dynamickv.cli import main; sys.argv = ['dynamickv', *sys.argv[1:]]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = sorted(m for m in ('torch', 'transformers') if m in sys.modules)\n"
        "print('HEAVY', heavy, file=sys.stderr)"
    )
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    assert "HEAVY []" in out.stderr, out.stderr[-500:]


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--method", "nope"], "unknown method 'nope'"),
        (["--budget", "0"], "budget must be > 0"),
        (["--budget", "-4"], "budget must be > 0"),
        (["--budget", "lots"], "cannot parse budget"),
        (["--method", "snapkv", "--budget", "32"], "observation window (32) must be smaller"),
        (["--method", "windowkv", "--budget", "16"], "alpha"),
    ],
)
def test_bad_arguments_one_line(tmp_path, capsys, extra, message):
    """In-process through ``cli.run`` (what ``main`` exits with); the entry point itself is run below."""
    from dynamickv import cli

    ctx = tmp_path / "c.txt"
    ctx.write_text("hello world")
    assert cli.run(["generate", "--context-file", str(ctx), "-q", "why?", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args,status,message",
    [
        ([], 2, "error: missing command"),
        (["generate", "-c", "x.txt", "-q", "x", "--max-new-tokens", "abc"], 2, "Invalid value"),
    ],
)
def test_entry_point_usage_errors(args, status, message):
    """The real entry point with the installed typer (which bundles its own click)."""
    out = run(*args)
    assert out.returncode == status
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in out.stderr


def test_debug_shows_the_traceback(tmp_path):
    out = run("--debug", "generate", "-c", str(tmp_path), "-q", "x")
    assert out.returncode == 1 and "Traceback" in out.stderr and "is a directory" in out.stderr


def test_ctrl_c_during_generate_exits_130(tmp_path):
    """SIGINT while ``generate`` runs (here: reading its context from a pipe) exits 130, one line."""
    fifo = tmp_path / "context"
    os.mkfifo(fifo)
    proc = subprocess.Popen(
        [sys.executable, "-m", "dynamickv.cli", "generate", "-c", str(fifo), "-q", "x"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # as from a terminal: a test runner started in the background (`cmd &`) ignores SIGINT, and
        # its children would inherit that (Python then installs no KeyboardInterrupt handler)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 120
        while True:  # the write end opens once generate has opened the pipe: it is inside the command
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
                time.sleep(0.1)
        os.write(fd, b"the beginning of a long document")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        os.close(fd)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert err.strip() == "interrupted" and "Traceback" not in err


def test_a_second_eval_into_the_same_out_is_refused(tmp_path, capsys):
    """Another process holds ``--out``: refused with its pid; once it is killed (-9), the lock is free."""
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from dynamickv.eval.runlock import run_lock\n"
            "lock = run_lock(sys.argv[1]); lock.__enter__(); print('locked', flush=True); time.sleep(300)",
            str(out),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        second = run("eval", "ruler", "--out", str(out))
        assert second.returncode == 2 and "Traceback" not in second.stderr
        assert f"another dynamickv eval is writing into {out} (pid {holder.pid}" in second.stderr
    finally:
        holder.kill()
        holder.wait()
    from dynamickv import cli

    assert cli.run(["eval", "mmlu", "--out", str(out)]) == 2  # got past the lock, stopped at the benchmark
    assert "unknown benchmark" in capsys.readouterr().err


def test_missing_context_file(tmp_path):
    out = run("generate", "--context-file", str(tmp_path / "none.txt"), "-q", "why?")
    assert out.returncode == 2 and "context file not found" in out.stderr and "Traceback" not in out.stderr


def test_unknown_model_offline(tmp_path, monkeypatch, capsys):
    from dynamickv import cli

    ctx = tmp_path / "c.txt"
    ctx.write_text("hello world")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("DYNAMICKV_CACHE", str(tmp_path))
    assert cli.run(["generate", "--context-file", str(ctx), "-q", "x", "--model", "someone/not-a-model"]) == 2
    err = capsys.readouterr().err
    assert "not found" in err and "Traceback" not in err


@pytest.mark.slow
def test_generate_json_on_default_model(tmp_path, smollm2):
    """The real SmolLM2-135M: compressed answer and accounting fields."""
    _, tok = smollm2
    context, question, answer = needle_prompt(tok, 1000)
    f = tmp_path / "ctx.txt"
    f.write_text(context)
    out = run(
        "generate",
        "--context-file",
        str(f),
        "-q",
        question,
        "--method",
        "dynamickv",
        "--budget",
        "128",
        "--json",
        "--max-new-tokens",
        "16",
    )
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert {
        "answer",
        "prompt_tokens",
        "kept_tokens_per_layer",
        "kv_heads",
        "kv_bytes",
        "full_kv_bytes",
        "prefill_seconds",
    } <= set(r)
    assert len(r["kept_tokens_per_layer"]) == 30 and r["kv_heads"] == 3
    assert sum(r["kept_tokens_per_layer"]) == 128 * 30
    assert r["kv_bytes"] < 0.2 * r["full_kv_bytes"]
    assert answer in r["answer"]
