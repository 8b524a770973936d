"""The evaluation runner: shared prefill == per-configuration runs, resume, output folder checks, summaries.

A tiny random Llama and a word-level tokenizer built offline; no benchmark data, no network.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("tokenizers")
pytest.importorskip("rich")

from dynamickv.errors import DynamicKVError, InputError
from dynamickv.eval import runner
from dynamickv.eval.base import Sample
from evalkit import (
    BUDGETS,
    METHODS,
    eval_model,
    eval_tokenizer,
    make_samples,
    run_grid,
    stable_metrics,
    stable_record,
)
from tiny import one_thread


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_thread()


@pytest.fixture(scope="module")
def tok():
    return eval_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return eval_model(tok)


_run = run_grid


def _lines(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


_stable, _stable_metrics = stable_record, stable_metrics


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, model, tok):
    """An uninterrupted shared-prefill run (WindowKV mode by category)."""
    out = tmp_path_factory.mktemp("ref") / "run"
    metrics = _run(make_samples(), model, tok, out, windowkv_mode="category")
    return out, metrics


# --------------------------------------------------------------------------------------------------


def test_shared_prefill_matches_separate_runs(reference_run, model, tok, tmp_path):
    out, _ = reference_run
    shared = _lines(out / runner.PREDICTIONS_FILE)
    separate_out = tmp_path / "separate"
    _run(make_samples(), model, tok, separate_out, windowkv_mode="category", shared_prefill=False)
    separate = _lines(separate_out / runner.PREDICTIONS_FILE)
    assert len(shared) == 3 * (1 + len(METHODS) * len(BUDGETS))
    assert [_stable(r) for r in shared] == [_stable(r) for r in separate]
    # the grid really differs: compressed configurations keep fewer tokens, predictions vary
    full = [r for r in shared if r["method"] == "fullkv"]
    assert all(r["budget"] is None for r in full)
    assert len({r["prediction"] for r in shared}) > 3
    for r in shared:
        if r["method"] != "fullkv":
            assert sum(r["kept_tokens_per_layer"]) < r["compressed_tokens"] * len(r["kept_tokens_per_layer"])
        assert set(r) >= {
            "uid", "task", "method", "budget", "prediction", "answers", "score",
            "kept_tokens_per_layer", "kv_bytes", "prompt_tokens", "seconds",
        }  # fmt: skip


def test_shared_prefill_matches_pipeline_directly(model, tok):
    """One configuration by hand with Pipeline, as a user would run it alone."""
    from dynamickv.pipeline import CompressedContext, Pipeline
    from dynamickv.replay import derive_cache, record_prefill

    sample = make_samples(1, seed=3)[0]
    head, tail = runner.split_prompt(sample, tok)
    assert head.shape[-1] + tail.shape[-1] == len(sample.prompt.split()) and tail.shape[-1] == 1
    pipe = Pipeline(model, tok, "snapkv", 40)
    expected = pipe.answer(pipe.prefill(head), tail, sample.max_new_tokens)

    cache, stats = derive_cache(record_prefill(model, head), "snapkv", 40)
    ctx = CompressedContext(cache, head, stats, 0.0)
    got = runner._decode(Pipeline(model, tok, "fullkv", 1), ctx, tail, sample, sample.max_new_tokens)
    assert got == expected and got.strip()


def test_windowkv_mode_by_category(reference_run):
    out, _ = reference_run
    samples = {runner.sample_uid(s): s for s in make_samples()}
    records = [r for r in _lines(out / runner.PREDICTIONS_FILE) if r["method"] == "windowkv"]
    assert records
    for r in records:
        expected = "localization" if samples[r["uid"]].category == "qa" else "aggregation"
        assert r["windowkv_mode"] == expected == r["windowkv_mode_setting"]


def test_resume_after_interruption(reference_run, model, tok, tmp_path, monkeypatch):
    ref_out, ref_metrics = reference_run
    out = tmp_path / "run"
    real = runner._decode
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 10:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "_decode", flaky)
    with pytest.raises(KeyboardInterrupt):
        _run(make_samples(), model, tok, out, windowkv_mode="category")
    assert len(_lines(out / runner.PREDICTIONS_FILE)) == 10
    assert not (out / runner.METRICS_FILE).exists()

    # a second interruption, then a kill mid-write leaves half a line
    calls["n"] = -5
    with pytest.raises(KeyboardInterrupt):
        _run(make_samples(), model, tok, out, windowkv_mode="category", resume=True)
    lines = _lines(out / runner.PREDICTIONS_FILE)
    assert len(lines) == 25
    half = json.dumps({**lines[0], "uid": "copy/1", "method": "h2o", "budget": 72})[:40]
    with open(out / runner.PREDICTIONS_FILE, "a", encoding="utf-8") as fh:
        fh.write(half)

    monkeypatch.setattr(runner, "_decode", real)
    metrics = _run(make_samples(), model, tok, out, windowkv_mode="category", resume=True)
    got = _lines(out / runner.PREDICTIONS_FILE)
    ref = _lines(ref_out / runner.PREDICTIONS_FILE)
    keys = [runner.record_key(r) for r in got]
    assert len(keys) == len(set(keys)) == len(ref)
    assert sorted(map(_stable, got)) == sorted(map(_stable, ref))
    assert _stable_metrics(metrics) == _stable_metrics(ref_metrics)
    saved = json.loads((out / runner.METRICS_FILE).read_text())
    assert saved["complete"] and _stable_metrics(saved) == _stable_metrics(
        json.loads(json.dumps(ref_metrics))
    )

    # resuming a finished run does no work and changes nothing
    before = (out / runner.PREDICTIONS_FILE).read_bytes()
    monkeypatch.setattr(runner, "_decode", lambda *a, **k: pytest.fail("nothing left to decode"))
    _run(make_samples(), model, tok, out, windowkv_mode="category", resume=True)
    assert (out / runner.PREDICTIONS_FILE).read_bytes() == before


def test_truncated_last_line_is_dropped(tmp_path):
    path = tmp_path / runner.PREDICTIONS_FILE
    good = {"uid": "a/0", "method": "snapkv", "budget": 64, "prediction": "x"}
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "uid": "a/1"})[:25], encoding="utf-8")
    records = runner.load_predictions(path)
    assert records == [good]
    assert path.read_text(encoding="utf-8") == json.dumps(good) + "\n"
    # duplicates are kept once; a corrupt line in the middle is an error
    path.write_text((json.dumps(good) + "\n") * 2, encoding="utf-8")
    assert runner.load_predictions(path) == [good]
    path.write_text("{oops\n" + json.dumps(good) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match="corrupt"):
        runner.load_predictions(path)


def test_existing_output_folder_and_different_config(reference_run, model, tok, tmp_path):
    out = tmp_path / "run"
    samples = make_samples(2)
    _run(samples, model, tok, out, methods=["snapkv"], budgets=[40])
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(InputError, match="--resume"):
        _run(samples, model, tok, out, methods=["snapkv"], budgets=[40])
    with pytest.raises(InputError, match=r"differing: .*budgets") as err:
        _run(samples, model, tok, out, methods=["snapkv", "h2o"], budgets=[72], resume=True)
    assert "methods" in str(err.value)
    with pytest.raises(InputError, match="samples_digest"):
        _run(make_samples(2, seed=9), model, tok, out, methods=["snapkv"], budgets=[40], resume=True)
    with pytest.raises(InputError, match="windowkv_mode"):
        _run(
            samples, model, tok, out, methods=["snapkv"], budgets=[40], resume=True, windowkv_mode="category"
        )
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert after == before  # nothing overwritten
    # a folder that is not a run
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="not empty"):
        _run(samples, model, tok, other)
    with pytest.raises(InputError, match=r"config\.json"):
        _run(samples, model, tok, other, resume=True)


def test_bad_inputs(model, tok, tmp_path):
    samples = make_samples(2)
    with pytest.raises(InputError, match="unknown benchmark"):
        runner.run(samples, model, tok, ["snapkv"], [40], tmp_path / "a", benchmark="mmlu", progress=False)
    with pytest.raises(DynamicKVError, match="unknown method"):
        _run(samples, model, tok, tmp_path / "b", methods=["nope"])
    with pytest.raises(DynamicKVError, match="every prompt"):
        _run(samples, model, tok, tmp_path / "c", budgets=[1000, 4096])
    with pytest.raises(DynamicKVError, match="window"):
        _run(samples, model, tok, tmp_path / "d", methods=["snapkv"], budgets=[16])
    with pytest.raises(InputError, match="no samples"):
        _run([], model, tok, tmp_path / "e")
    assert not any((tmp_path / name).exists() for name in "abcde")


def test_summary_has_reference_and_percentages(reference_run):
    out, metrics = reference_run
    md = (out / runner.SUMMARY_MD).read_text(encoding="utf-8")
    assert "fullkv (reference)" in md and "%)" in md
    assert "### Average" in md and "### recall" in md and "### copy" in md
    with open(out / runner.SUMMARY_CSV, encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert set(rows[0]) == {"task", "method", "B=40", "B=40 %FullKV", "B=72", "B=72 %FullKV"}
    tasks = {r["task"] for r in rows}
    assert {"average", "recall", "copy"} <= tasks
    full = [r for r in rows if r["method"] == "fullkv"]
    assert len(full) == len(tasks)
    for r in full:
        assert r["B=40"] == r["B=72"]
        if float(r["B=40"]) > 0:
            assert float(r["B=40 %FullKV"]) == 100.0
    # metrics: task x method x budget, averages, % of FullKV
    assert set(metrics["scores"]) == {"recall", "copy"}
    assert set(metrics["scores"]["recall"]) == {"fullkv", *METHODS}
    assert set(metrics["scores"]["recall"]["snapkv"]) == {"40", "72"}
    assert metrics["scores"]["recall"]["fullkv"].keys() == {"full"}
    avg = metrics["average"]["snapkv"]["40"]
    assert avg == pytest.approx(
        (metrics["scores"]["recall"]["snapkv"]["40"] + metrics["scores"]["copy"]["snapkv"]["40"]) / 2
    )
    ref = metrics["average"]["fullkv"]["full"]
    if ref:
        assert metrics["relative_to_fullkv"]["average"]["snapkv"]["40"] == pytest.approx(100 * avg / ref)
    assert json.loads((out / runner.METRICS_FILE).read_text())["complete"] is True


def test_niah_heatmaps(model, tok, tmp_path):
    pytest.importorskip("matplotlib")
    samples = make_samples(2)
    for s in samples:
        s.task = "niah"
        s.meta.update(keywords=s.answers[:1], length=256 * (1 + s.index))
    metrics = runner.run(
        samples, model, tok, ["snapkv"], [40], tmp_path / "n", benchmark="niah", progress=False
    )
    names = sorted(p.name for p in (tmp_path / "n" / runner.HEATMAP_DIR).glob("*.png"))
    assert names == ["fullkv.png", "snapkv_B40.png"]
    assert set(metrics["by_length"]) == {"256", "512"}


def test_prompt_split_with_chat_template_and_answer_prefix(tok):
    chat = tok.__class__(tokenizer_object=tok.backend_tokenizer, unk_token="<unk>", pad_token="<pad>")
    chat.chat_template = "{% for m in messages %}w1 {{ m['content'] }} w2 {% endfor %}w3 "
    sample = Sample("t", 0, "w10 w11 w12 w20 w21", ["x"], 4, "qa", meta={"answer_prefix": " w20 w21"})
    head, tail = runner.split_prompt(sample, chat)
    assert chat.decode(head[0]).split() == ["w1", "w10", "w11", "w12"]
    assert chat.decode(tail[0]).split() == ["w2", "w3", "w20", "w21"]
    # without a chat template (or with chat_template=False) the prompt stays whole, last token fed after
    head, tail = runner.split_prompt(Sample("t", 0, "w10 w11 w12", ["x"], 4, "qa", chat_template=False), chat)
    assert head.tolist() == [[12, 13]] and tail.tolist() == [[14]]


def test_cli_errors_before_loading_a_model(tmp_path, monkeypatch, capsys):
    from dynamickv import cli, models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("the model must not be loaded"))

    def run_cli(*args: str) -> str:
        monkeypatch.setattr(sys, "argv", ["dynamickv", "eval", *args])
        with pytest.raises(SystemExit) as exc:
            cli.main()
        assert exc.value.code == 2
        return capsys.readouterr().err

    out = str(tmp_path / "out")
    assert "unknown benchmark 'mmlu'" in run_cli("mmlu", "--out", out)
    assert "unknown RULER task" in run_cli("ruler", "--tasks", "niah_single_9", "--out", out)
    assert "unknown LongBench task" in run_cli(
        "longbench", "--tasks", "nope", "--data-dir", out, "--out", out
    )
    assert "--data-dir" in run_cli("longbench", "--out", out)
    empty = tmp_path / "data"
    empty.mkdir()
    assert "no .jsonl" in run_cli("longbench", "--tasks", "qasper", "--data-dir", str(empty), "--out", out)
    assert "unknown method" in run_cli("ruler", "--methods", "snapkv,zip", "--out", out)
    assert "window" in run_cli("ruler", "--methods", "snapkv", "--budgets", "16", "--out", out)
    # an existing run with other options
    done = tmp_path / "done"
    done.mkdir()
    (done / runner.CONFIG_FILE).write_text(json.dumps({"benchmark": "ruler", "budgets": ["64"]}))
    assert "--resume" in run_cli("ruler", "--out", str(done))
    err = run_cli("ruler", "--budgets", "128", "--out", str(done), "--resume")
    assert "different configuration" in err and "budgets" in err
    # one model spread over every GPU cannot be combined with one rank per GPU
    for name, value in (("WORLD_SIZE", "2"), ("RANK", "0"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(name, value)
    assert "--device cuda" in run_cli("ruler", "--tasks", "vt", "--device", "auto", "--out", out)
    assert not (tmp_path / "out").exists()


def test_method_specs_in_a_grid(model, tok, tmp_path):
    """A spec is its own configuration: labelled by the spec, built with its parameters, and the
    shared prefill still equals running it alone."""
    methods = ["snapkv", "snapkv:window=8;pooling=avg"]
    shared = _run(make_samples(2), model, tok, tmp_path / "a", methods=methods, budgets=[40])
    alone = _run(
        make_samples(2), model, tok, tmp_path / "b", methods=methods, budgets=[40], shared_prefill=False
    )
    assert [c["method"] for c in shared["configurations"]] == [
        "fullkv",
        "snapkv",
        "snapkv:window=8;pooling=avg",
    ]
    got = _lines(tmp_path / "a" / runner.PREDICTIONS_FILE)
    assert sorted(map(_stable, got)) == sorted(map(_stable, _lines(tmp_path / "b" / runner.PREDICTIONS_FILE)))
    assert _stable_metrics(shared) == _stable_metrics(alone)
    # the parameters took effect: the variant keeps other tokens than the default on some sample
    from dynamickv.replay import derive_cache, record_prefill

    head, _ = runner.split_prompt(make_samples(1)[0], tok)
    record = record_prefill(model, head)
    a, _ = derive_cache(record, "snapkv", 40)
    b, _ = derive_cache(record, "snapkv:window=8;pooling=avg", 40)
    assert any(not torch.equal(x.positions, y.positions) for x, y in zip(a.layers, b.layers, strict=True))


def test_equivalent_specs_are_one_configuration():
    """`snapkv` and `snapkv:window=32` (its default) are computed once, under the shorter name."""
    from dynamickv.eval.grid import configurations
    from dynamickv.methods import canonical_spec

    assert canonical_spec("snapkv:window=32") == "snapkv"
    assert canonical_spec("snapkv:window=8;pooling=max") == "snapkv:window=8"
    grid = configurations(["snapkv", "snapkv:window=32", "snapkv:window=8", "fullkv"], [64, "64"])
    assert [c.label for c in grid] == ["fullkv", "snapkv B=64", "snapkv:window=8 B=64"]


def test_software_recorded_and_a_resume_under_another_release_said(
    reference_run, model, tok, tmp_path, capsys
):
    """config.json and summary.md say which releases made the predictions; a run resumed under
    another release goes on (its predictions stay valid) but both releases are recorded and said."""
    import shutil

    import transformers

    import dynamickv

    ref_out, _ = reference_run
    made = json.loads((ref_out / runner.CONFIG_FILE).read_text())["software"]
    here = {
        "dynamickv": dynamickv.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerator": "cpu",
    }
    assert made == here
    line = f"Software: dynamickv {here['dynamickv']}, torch {here['torch']}, transformers {here['transformers']}, on cpu."
    assert line in (ref_out / runner.SUMMARY_MD).read_text(encoding="utf-8")

    out = tmp_path / "run"
    shutil.copytree(ref_out, out)
    config = json.loads((out / runner.CONFIG_FILE).read_text())
    config["software"] = {**here, "transformers": "5.17.0"}
    (out / runner.CONFIG_FILE).write_text(json.dumps(config))
    capsys.readouterr()
    for _ in range(2):  # a second resume under the same release adds nothing
        metrics = _run(make_samples(), model, tok, out, windowkv_mode="category", resume=True)
        err = capsys.readouterr().err
        assert "made with dynamickv" in err and "transformers 5.17.0" in err
        assert f"goes on with dynamickv {here['dynamickv']}" in err
        saved = json.loads((out / runner.CONFIG_FILE).read_text())
        assert saved["software"]["transformers"] == "5.17.0" and saved["resumed_with"] == [here]
    assert metrics["resumed_with"] == [here]
    md = (out / runner.SUMMARY_MD).read_text(encoding="utf-8")
    assert "transformers 5.17.0, on cpu." in md and f"Resumed with: {line.removeprefix('Software: ')}" in md
