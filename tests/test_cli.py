"""The command line: one-line errors for bad input, and the JSON report on the real default model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dynamickv.report import needle_prompt


def run(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "dynamickv.cli", *args], capture_output=True, text=True, env=env
    )


def test_methods_lists_every_method():
    out = run("methods")
    assert out.returncode == 0
    names = [line.split()[0] for line in out.stdout.splitlines()]
    assert names == ["fullkv", "streamingllm", "h2o", "snapkv", "pyramidkv", "dynamickv", "windowkv", "adakv"]


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
def test_bad_arguments_one_line(tmp_path, extra, message):
    ctx = tmp_path / "c.txt"
    ctx.write_text("hello world")
    out = run("generate", "--context-file", str(ctx), "-q", "why?", *extra)
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_missing_context_file(tmp_path):
    out = run("generate", "--context-file", str(tmp_path / "none.txt"), "-q", "why?")
    assert out.returncode == 2 and "context file not found" in out.stderr and "Traceback" not in out.stderr


def test_unknown_model_offline(tmp_path, monkeypatch):
    ctx = tmp_path / "c.txt"
    ctx.write_text("hello world")
    import os

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DYNAMICKV_CACHE": str(tmp_path)}
    out = run("generate", "--context-file", str(ctx), "-q", "x", "--model", "someone/not-a-model", env=env)
    assert out.returncode == 2 and "not found" in out.stderr and "Traceback" not in out.stderr


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
