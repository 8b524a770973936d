"""Every bad input the reliability probe listed, through the CLI's own entry code (``dynamickv.cli.run``,
which ``main`` exits with), in-process: one ``error:`` line, the right exit status, no traceback, and
for what needs no model, no model loaded. ``test_cli.py`` runs a few of them through the real
``dynamickv`` entry point in a subprocess.
"""

from __future__ import annotations

import errno
import json
import os

import pytest
import torch

from dynamickv import cli, models
from dynamickv.eval import runlock, runner
from tiny import save_tiny_model

WORDS = " ".join(f"w{i % 254}" for i in range(300))


def call(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.run([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if line.startswith(("error:", "interrupted"))]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def no_model(monkeypatch):
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("the model must not be loaded"))


@pytest.fixture
def ctx(tmp_path):
    path = tmp_path / "ctx.txt"
    path.write_text(WORDS)
    return path


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model", max_position_embeddings=256)


NO_CUDA = not torch.cuda.is_available()


@pytest.mark.parametrize(
    "args,message",
    [
        (["nope"], "No such command 'nope'"),
        (["methods", "extra"], "unexpected extra argument"),
        (["generate", "-q", "x"], "Missing option '--context-file'"),
        (["generate", "CTX", "--bogus"], "No such option: --bogus"),
        (["generate", "CTX", "--max-new-tokens", "abc"], "Invalid value for '--max-new-tokens'"),
        (["generate", "CTX", "--max-new-tokens", "0"], "--max-new-tokens must be at least 1, got 0"),
        (["generate", "CTX", "--max-new-tokens", "-3"], "--max-new-tokens must be at least 1, got -3"),
        (["generate", "CTX", "--budget", "lots"], "cannot parse budget"),
        (["generate", "CTX", "--attn", "flash_attention_2"], "flash_attention_2 is not supported"),
        (["generate", "CTX", "--attn", "fast"], "unknown --attn value 'fast'"),
        (["generate", "CTX", "--device", "tpu7"], "unknown --device 'tpu7'"),
        (["bench", "--device", "tpu7"], "unknown --device 'tpu7'"),
        (["generate", "CTX", "--dtype", "float64"], "unknown dtype 'float64'"),
        (["generate", "CTX", "--truncate", "end"], "unknown --truncate value 'end'"),
        (["generate", "CTX", "--method", "windowkv:omega=x"], "windowkv.omega: 'x' is not an integer"),
        (["generate", "CTX", "--method", "dynamickv:r_max=nan"], "not a finite number"),
        (["generate", "CTX", "--method", "windowkv:window=8"], "'window' is not used by windowkv"),
        (["demo", "--methods", "snapkv,zip"], "unknown method 'zip'"),
        (["demo", "--context-tokens", "0"], "--context-tokens must be at least 1"),
        (["eval", "ruler", "--out", "OUT", "--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
        (["eval", "ruler", "--out", "OUT", "--attn", "flash_attention_2"], "is not supported"),
        (["eval", "ruler", "--out", "OUT", "--methods", "windowkv:omega=x"], "windowkv.omega"),
        (["eval", "ruler", "--out", "OUT", "--methods", "pyramidkv:beta=inf"], "not a finite number"),
        # options a benchmark would ignore, and lists that would make no sample (2026-12-01 probe)
        (["eval", "niah", "--out", "OUT", "--samples", "5"], "niah has one sample per length x depth"),
        (["eval", "ruler", "--out", "OUT", "--lengths", ","], "--lengths is empty"),
        (["eval", "ruler", "--out", "OUT", "--data-dir", "OUT"], "--data-dir applies to longbench"),
        (
            ["eval", "ruler", "--out", "OUT", "--max-input-tokens", "0"],
            "--max-input-tokens applies to longbench",
        ),
        (["eval", "ruler", "--out", "OUT", "--depths", "50"], "--depths applies to niah, not ruler"),
        (
            ["eval", "niah", "--out", "OUT", "--depths", "50,500"],
            "percentages of the context (0 to 100), got 500",
        ),
        (
            ["eval", "longbench", "--out", "OUT", "--tasks", "qasper_e", "--data-dir", "OUT"],
            "is a LongBench-E task",
        ),
        (["generate", "CTX", "--budget", "inf"], "budget must be a finite number"),
        (["generate", "CTX", "--budget", "128.0"], "a token count is an integer (128)"),
        (["generate", "CTX", "--method", "snapkv:window=8;window=16"], "window is given twice"),
        (["generate", "-c", "CTXFILE", "-q", "  "], "--question is empty"),
        (
            ["generate", "CTX", "--budget", "8"],
            "dynamickv-auto (its dynamickv-preference branch): the observation",
        ),
        (["analyze", "--out", "OUT", "--device", "gpu"], "unknown --device 'gpu'"),
        (["analyze", "--out", "OUT", "--dtype", "float64"], "unknown dtype 'float64'"),
        (
            ["analyze", "--out", "OUT", "-b", "niah", "--max-input-tokens", "0"],
            "applies to longbench, not niah",
        ),
        (["analyze", "--out", "/proc/dynamickv-test/x", "-b", "niah"], "cannot create the output folder"),
        (["bench", "--lengths", "0"], "--lengths must be positive"),
        (["bench", "--chunk", "0"], "--chunk must be at least 1"),
        (["bench", "--batch", "2", "--distinct", "5"], "--distinct 5 is more than --batch 2"),
        (
            ["bench", "--methods", "snapkv", "--budget", "32"],
            "snapkv: the observation window (32) must be smaller",
        ),
        (["bench", "--methods", " , "], "--methods is empty"),
        (["bench", "--out", "OUT"], "is a folder; give a file name"),
        (["bench", "--out", "OUT/none/b.json"], "does not exist"),
        (["bench", "--kvpress-path", "OUT"], "no kvpress package there"),
        *(
            pytest.param(
                args, "CUDA is not available", marks=pytest.mark.skipif(not NO_CUDA, reason="has CUDA")
            )
            for args in (
                ["generate", "CTX", "--device", "cuda"],
                ["eval", "ruler", "--out", "OUT", "--device", "cuda:0"],
                ["bench", "--device", "cuda"],
            )
        ),
    ],
)
def test_usage_errors_before_the_model_loads(capsys, no_model, ctx, tmp_path, args, message):
    out = tmp_path / "out"
    if args[0] == "bench" or "--data-dir" in args:
        out.mkdir()  # an existing folder where bench wants a file, or an (empty) LongBench folder
    expanded = []
    for a in args:
        a = {"OUT": str(out), "CTXFILE": str(ctx)}.get(a, a.replace("OUT/", f"{out}/"))
        expanded += ["-c", ctx, "-q", "x"] if a == "CTX" else [a]
    code, _, err = call(capsys, *expanded)
    assert code == 2
    assert message in one_error_line(err)
    if args[0] != "bench" and "--data-dir" not in args:
        assert not out.exists()  # a refused eval leaves no folder behind


def test_bare_command_shows_the_commands_and_exits_2(capsys):
    code, out, err = call(capsys)
    assert code == 2 and "generate" in out + err and "missing command" in one_error_line(err)


def test_context_file_problems(capsys, no_model, tmp_path):
    code, _, err = call(capsys, "generate", "-c", tmp_path, "-q", "x")
    assert code == 2 and "is a directory" in one_error_line(err)
    code, _, err = call(capsys, "generate", "-c", tmp_path / "none.txt", "-q", "x")
    assert code == 2 and "context file not found" in one_error_line(err)
    (tmp_path / "blank.txt").write_text(" \n")
    code, _, err = call(capsys, "generate", "-c", tmp_path / "blank.txt", "-q", "x")
    assert code == 2 and "empty" in one_error_line(err)


def test_limits_of_the_model_are_named_with_the_option_to_change(capsys, tiny_dir, ctx):
    code, _, err = call(
        capsys, "generate", "-c", ctx, "-q", "w1", "--model", tiny_dir, "--max-new-tokens", "100000"
    )
    assert code == 2 and "lower the answer length (--max-new-tokens)" in one_error_line(err)
    code, _, err = call(
        capsys, "demo", "--model", tiny_dir, "--context-tokens", "100000000"
    )  # no haystack built
    assert code == 2 and "does not fit" in one_error_line(err) and "use at most" in one_error_line(err)


def test_bench_keeps_its_rows_when_the_kvpress_process_fails(capsys, tmp_path):
    fake = tmp_path / "site" / "kvpress"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('this kvpress is broken')\n")
    out = tmp_path / "b.json"
    args = [
        "bench",
        "--config",
        "tiny",
        "--lengths",
        "128",
        "--steps",
        "2",
        "--budget",
        "48",
        "--methods",
        "snapkv",
    ]
    code, _, err = call(capsys, *args, "--device", "cpu", "--kvpress-path", fake.parent, "--out", out)
    assert code == 2
    line = one_error_line(err)
    assert "the kvpress process failed (exit 1)" in line and "this kvpress is broken" in line
    assert [r["method"] for r in json.loads(out.read_text())["rows"]] == ["snapkv"]  # ours were written
    assert "Traceback" in out.with_suffix(".kvpress.log").read_text()  # the whole story is in the log


def test_binary_context_is_warned_about(capsys, tiny_dir, tmp_path):
    blob = tmp_path / "blob.bin"
    blob.write_bytes(os.urandom(300) + b"\x00" * 10 + WORDS.encode())
    code, _, err = call(capsys, "generate", "-c", blob, "-q", "w1", "--model", tiny_dir, "--max-new-tokens", "2",
                        "--budget", "200", "--truncate", "middle")  # fmt: skip
    assert code == 0, err
    assert "warning: " in err and "does not look like text" in err


def test_prompt_longer_than_the_model_is_refused_or_cut_in_the_middle(capsys, tiny_dir, tmp_path):
    long = tmp_path / "long.txt"
    long.write_text(" ".join(f"w{i % 254}" for i in range(1000)))
    base = [
        "generate",
        "-c",
        long,
        "-q",
        "w1 w2",
        "--model",
        tiny_dir,
        "--budget",
        "64",
        "--max-new-tokens",
        "4",
    ]
    code, out, err = call(capsys, *base)
    assert code == 2 and out == ""
    line = one_error_line(err)
    assert "the prompt has 1002 tokens (+4 to generate)" in line and "at most 256 positions" in line
    assert "--truncate middle" in line
    code, out, err = call(capsys, *base, "--truncate", "middle", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["truncated_from"] == 1002 and result["prompt_tokens"] + 4 <= 256
    assert "cut in the middle from 1002" in err


@pytest.mark.parametrize("command", ["generate", "demo", "eval"])
def test_ctrl_c_exits_130(capsys, monkeypatch, ctx, tmp_path, command):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "load_model", interrupted)
    monkeypatch.setattr(models, "resolve_model_dir", interrupted)
    args = {
        "generate": ["generate", "-c", ctx, "-q", "x"],
        "demo": ["demo"],
        "eval": ["eval", "niah", "--out", tmp_path / "out"],
    }[command]
    code, _, err = call(capsys, *args)
    assert code == 130 and one_error_line(err) == "interrupted"


def _longbench_dir(path):
    path.mkdir()
    record = {"input": "w5 w6", "context": WORDS, "answers": ["w7"], "length": 300}
    (path / "qasper.jsonl").write_text(json.dumps(record) + "\n")
    return path


def test_eval_interrupted_says_where_the_predictions_are(capsys, monkeypatch, tiny_dir, tmp_path):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run", interrupted)
    out = tmp_path / "out"
    args = ["eval", "longbench", "--tasks", "qasper", "--data-dir", _longbench_dir(tmp_path / "lb")]
    args += ["--max-input-tokens", "180", "--max-new-tokens", "4", "--no-progress"]
    code, _, err = call(capsys, *args, "--model", tiny_dir, "--budgets", "40", "--out", out)
    assert code == 130
    assert (
        one_error_line(err)
        == f"interrupted: predictions so far are in {out}; rerun with --resume to continue"
    )


def test_resume_refuses_other_weights_at_the_same_path(capsys, tmp_path):
    model_dir = save_tiny_model(tmp_path / "model", max_position_embeddings=512)
    out = tmp_path / "out"
    args = ["eval", "longbench", "--tasks", "qasper", "--data-dir", _longbench_dir(tmp_path / "lb")]
    args += ["--model", model_dir, "--methods", "snapkv,windowkv:omega=8", "--budgets", "40", "--out", out]
    args += ["--no-progress"]
    args += ["--max-input-tokens", "180", "--max-new-tokens", "4"]
    code, _, err = call(capsys, *args)
    assert code == 0, err
    assert "Loading weights" not in err  # --no-progress silences transformers' bar too
    recorded = json.loads((out / runner.CONFIG_FILE).read_text())["model_fingerprint"]
    assert recorded and not (out / runlock.LOCK_FILE).read_text()  # the lock is released, no pid left
    code, _, err = call(capsys, *args, "--resume")  # the same weights: resumes (nothing left to do)
    assert code == 0, err
    save_tiny_model(model_dir, max_position_embeddings=512, seed=1)  # other weights, same path
    code, _, err = call(capsys, *args, "--resume")
    assert code == 2
    line = one_error_line(err)
    assert "are not the ones the run was made with" in line and recorded in line
    lines = (out / runner.PREDICTIONS_FILE).read_text().splitlines()
    assert len(lines) == 3  # fullkv, snapkv, windowkv of the one sample; not appended to by the refusal
    assert json.loads(lines[2])["method"] == "windowkv:omega=8"  # a None-default parameter, set


def test_ruler_lengths_beyond_the_model_are_refused_before_generating(capsys, tiny_dir, tmp_path):
    code, _, err = call(
        capsys, "eval", "niah", "--model", tiny_dir, "--lengths", "128,1024", "--out", tmp_path / "o"
    )
    assert code == 2 and "--lengths 1024 exceed the model's 256 positions" in one_error_line(err)


def test_unwritable_or_full_out_is_refused_before_the_model_loads(capsys, no_model, monkeypatch, tmp_path):
    real_open, real_pwrite = os.open, os.pwrite

    def refuse(number):
        def fake(path, *args, **kwargs):
            if str(path).endswith(runlock.LOCK_FILE):
                raise OSError(number, os.strerror(number), str(path))
            return real_open(path, *args, **kwargs)

        return fake

    for number, text in ((errno.EROFS, "Read-only file system"), (errno.EACCES, "Permission denied")):
        monkeypatch.setattr(os, "open", refuse(number))
        code, _, err = call(capsys, "eval", "ruler", "--out", tmp_path / "out")
        assert code == 2 and f"cannot write into --out {tmp_path / 'out'}: {text}" in one_error_line(err)
    monkeypatch.setattr(os, "open", real_open)

    def full(fd, data, offset):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "pwrite", full)
    code, _, err = call(capsys, "eval", "ruler", "--out", tmp_path / "out")
    assert code == 2 and "No space left on device" in one_error_line(err)
    monkeypatch.setattr(os, "pwrite", real_pwrite)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_out_folder(capsys, no_model, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        code, _, err = call(capsys, "eval", "ruler", "--out", folder / "run")
    finally:
        folder.chmod(0o700)
    assert code == 2 and "cannot write into --out" in one_error_line(err)


def test_a_file_system_failure_while_running_is_one_line(capsys, monkeypatch, ctx):
    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/predictions.jsonl")

    monkeypatch.setattr(models, "load_model", disk_full)
    code, _, err = call(capsys, "generate", "-c", ctx, "-q", "x")
    assert code == 1
    assert one_error_line(err) == "error: No space left on device: /data/predictions.jsonl"
