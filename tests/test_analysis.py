"""Retention analysis: recorded counts are the cache's real sizes; the score; the plots; CLI errors.

A tiny random Llama and a word-level tokenizer built offline; no benchmark data, no network.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

pytest.importorskip("tokenizers")
pytest.importorskip("matplotlib")

from dynamickv.analysis import plots, retention
from dynamickv.analysis.cli import analyze_command
from dynamickv.cache import compressed_layers, kept_tokens_per_layer
from dynamickv.errors import DynamicKVError, InputError
from dynamickv.eval.base import Sample
from dynamickv.eval.runner import split_prompt
from dynamickv.replay import derive_cache, record_prefill
from tiny import one_thread, tiny_model, word_tokenizer

WORDS = [f"w{i}" for i in range(120)]
BUDGET = 40
NEEDLE = "w7 w8 w9 w10"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_thread()


@pytest.fixture(scope="module")
def tok():
    return word_tokenizer(WORDS, join_with_spaces=True)


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama")


def make_samples() -> list[Sample]:
    rng = random.Random(0)
    out = []
    for i, (task, cat) in enumerate(
        [("niah_a", "synthetic"), ("qa_a", "qa"), ("niah_a", "synthetic"), ("qa_a", "qa")]
    ):
        words = [rng.choice(WORDS[12:]) for _ in range(rng.randint(150, 220))]
        meta = {}
        if task.startswith("niah"):
            at = len(words) // 3
            words[at:at] = NEEDLE.split()
            meta["needle"] = NEEDLE
        out.append(
            Sample(
                task=task,
                index=i,
                prompt=" ".join(words),
                answers=[NEEDLE],
                max_new_tokens=4,
                category=cat,
                chat_template=False,
                meta=meta,
            )
        )
    return out


@pytest.fixture(scope="module")
def records(tmp_path_factory, model, tok):
    out = tmp_path_factory.mktemp("ret")
    return out, retention.record_samples(model, tok, make_samples(), BUDGET, out)


def test_recorded_counts_equal_cache_sizes(model, tok, records):
    _, recs = records
    for sample, rec in zip(make_samples(), recs, strict=True):
        head, _ = split_prompt(sample, tok)
        cache, stats = derive_cache(record_prefill(model, head), "dynamickv", BUDGET)
        layers = compressed_layers(cache)
        sizes = kept_tokens_per_layer(cache)
        assert rec["layers"] == sorted(layers) == stats.compressed_layers
        assert rec["kept_per_layer"] == [sizes[i] for i in rec["layers"]] == stats.kept_per_layer
        for j, i in enumerate(rec["layers"]):
            pos = layers[i].positions[0]
            assert rec["kept_per_head"][j] == [pos.shape[-1]] * pos.shape[0] == [layers[i].keys.shape[-2]] * 2
            assert rec["positions"][j] == pos[0].tolist()
            assert rec["positions"][j] == sorted(set(rec["positions"][j]))
        assert rec["prompt_tokens"] == head.shape[-1] and rec["budget"] == BUDGET
    # DynamicKV really re-distributes: not every layer keeps B
    assert any(len(set(r["kept_per_layer"])) > 1 for r in recs)


def test_needle_span_and_resume(records, model, tok):
    out, recs = records
    rec = recs[0]
    ((a, b),) = rec["needle_spans"]
    words = make_samples()[0].prompt.split()
    assert " ".join(words[a:b]) == NEEDLE
    assert recs[1]["needle_spans"] is None
    lines = (out / retention.RECORDS).read_text().splitlines()
    again = retention.record_samples(model, tok, make_samples(), BUDGET, out)
    assert (out / retention.RECORDS).read_text().splitlines() == lines and len(again) == len(lines) == 4
    assert [json.loads(line)["uid"] for line in lines] == [r["uid"] for r in recs]


def test_head_adaptive_records_are_the_cache_counts(model, tok, tmp_path):
    """``method="adakv"``: per-head counts differ, sum to the layer budget and are the cache's own;
    the per-head heatmap is drawn; records of another method in the same folder are not reused."""
    sample = make_samples()[0]
    rec = retention.record_sample(model, tok, sample, BUDGET, "adakv", window=8)
    head, _ = split_prompt(sample, tok)
    cache, _ = derive_cache(record_prefill(model, head), "adakv", BUDGET, window=8)
    layers = compressed_layers(cache)
    assert rec["method"] == "adakv"
    for j, i in enumerate(rec["layers"]):
        assert rec["kept_per_head"][j] == layers[i].kept_counts()[0].tolist()
        assert sum(rec["kept_per_head"][j]) == BUDGET * 2  # two KV heads share the layer budget
        assert len(rec["positions"][j]) == rec["kept_per_head"][j][0]
    assert any(len(set(h)) > 1 for h in rec["kept_per_head"])  # heads really differ
    assert sum(rec["heads_differ"]) > 0
    grid = plots.head_profiles([rec])
    assert grid.shape == (len(rec["layers"]), 2) and np.allclose(grid.mean(axis=1), 1.0)
    path = plots.head_retention([rec], tmp_path / "h.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = tmp_path / "mixed"
    retention.record_samples(model, tok, make_samples()[:1], BUDGET, out)
    again = retention.record_samples(model, tok, make_samples()[:1], BUDGET, out, method="adakv", window=8)
    assert [r["method"] for r in again] == ["adakv"]
    assert len(retention.load_records(out)) == 2


def _fake(profile_by_cat: dict[str, list[float]], n: int, noise: float, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for cat, prof in profile_by_cat.items():
        for i in range(n):
            kept = np.round(100 * (np.asarray(prof) + noise * rng.standard_normal(len(prof)))).astype(int)
            out.append(
                {
                    "uid": f"{cat}/{i}",
                    "task": cat,
                    "category": cat,
                    "budget": 100,
                    "kept_per_layer": kept.tolist(),
                }
            )
    return out


def test_task_dependence_score():
    separated = _fake({"qa": [1.5, 1.0, 0.5, 1.0], "synthetic": [0.5, 1.0, 1.5, 1.0]}, 6, 0.05)
    td = retention.task_dependence(separated)
    assert td["f"] > 50 and td["p_value"] < 0.02 and td["groups"] == {"qa": 6, "synthetic": 6}
    assert td["between_rms"] > td["within_rms"]
    same = _fake({"qa": [1.2, 1.0, 0.8, 1.0], "synthetic": [1.2, 1.0, 0.8, 1.0]}, 6, 0.2, seed=1)
    td2 = retention.task_dependence(same)
    assert td2["f"] < 5 and td2["p_value"] > 0.05
    assert retention.task_dependence(same) == td2  # fixed seed: reproducible
    one = retention.task_dependence(_fake({"qa": [1.0, 1.0]}, 3, 0.1))
    assert one["f"] is None and one["p_value"] is None


def test_summary(records):
    _, recs = records
    s = retention.summarize(recs, model="tiny")
    assert (
        s["samples"] == 4
        and s["heads_equal_counts"]
        and set(s["mean_profile_by_category"]) == {"synthetic", "qa"}
    )
    assert s["task_dependence"]["category"]["f"] is not None
    json.dumps(s)


def test_plots_non_empty(records, tmp_path):
    import matplotlib.image as mpimg

    _, recs = records
    paths = plots.plot_all(recs, tmp_path, title="tiny")
    assert [p.name for p in paths] == [
        "retention_boxplots.png",
        "retention_means.png",
        "task_profiles.png",
        "positions_map.png",
        "budget_shapes.png",
        "head_retention.png",
    ]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        img = mpimg.imread(p)
        assert img.shape[0] > 100 and img.shape[1] > 100 and float(img[..., :3].std()) > 0.01
    assert plots.pick_sample(recs)["needle_spans"]


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"benchmark": "mmlu"}, "unknown benchmark 'mmlu'"),
        ({"budget": "lots"}, "bad budget"),
        ({"budget": "0"}, "budget"),
        ({"samples": 0}, "--samples must be positive"),
        ({"benchmark": "longbench"}, "needs --data-dir"),
        ({"tasks": "nope"}, "unknown RULER task"),
    ],
)
def test_cli_errors(tmp_path, kwargs, message):
    with pytest.raises(DynamicKVError, match=message) as info:
        analyze_command(out=tmp_path / "o", **kwargs)
    assert isinstance(info.value, InputError)


def test_cli_end_to_end(tmp_path, model, tok, monkeypatch):
    """``analyze`` on NIAH with the tiny model: records, summary and plots; a second run resumes."""
    import dynamickv.models

    monkeypatch.setattr(dynamickv.models, "load_model", lambda name, progress=False, **kw: (model, tok))
    out = tmp_path / "o"
    analyze_command(out=out, benchmark="niah", lengths="200", depths="30,70", budget="40")
    recs = retention.load_records(out)
    summary = json.loads((out / retention.SUMMARY).read_text())
    assert len(recs) == 2 and summary["samples"] == 2 and summary["heads_equal_counts"]
    assert all((out / name).stat().st_size > 1000 for name in summary["plots"])
    analyze_command(out=out, benchmark="niah", lengths="200", depths="30,70", budget="40", plots=False)
    assert len((out / retention.RECORDS).read_text().splitlines()) == 2


def test_rerun_with_other_settings_is_refused(tmp_path, model, tok, monkeypatch):
    """Records are reused by sample; a rerun into the same --out with another budget, method or
    protocol would summarise the old records under the new name, so it is refused."""
    import dynamickv.models

    monkeypatch.setattr(dynamickv.models, "load_model", lambda name, progress=False, **kw: (model, tok))
    out = tmp_path / "o"
    common = dict(out=out, benchmark="niah", lengths="200", depths="30", plots=False)
    analyze_command(**common, budget="40")
    settings = json.loads((out / "settings.json").read_text())
    assert settings["budget"] == "40" and settings["method"] == "dynamickv"
    for change, message in [
        ({"budget": "60"}, "budget: '40' there, '60' here"),
        ({"budget": "40", "method": "snapkv"}, "method: 'dynamickv' there, 'snapkv' here"),
        ({"budget": "40", "protocol": "chat"}, "protocol: 'raw' there, 'chat' here"),
    ]:
        with pytest.raises(InputError, match=f"holds an analysis made with other settings \\({message}\\)"):
            analyze_command(**{**common, **change})
    before = (out / retention.RECORDS).read_text()
    analyze_command(**common, budget="40")  # the same settings resume
    assert (out / retention.RECORDS).read_text() == before

    legacy = tmp_path / "legacy"  # a folder from before settings.json: its summary is compared
    legacy.mkdir()
    (legacy / retention.RECORDS).write_text('{"uid": "x"}\n')
    (legacy / retention.SUMMARY).write_text(json.dumps({"model": "smollm2-135m", "budget": "10%"}))
    with pytest.raises(InputError, match=r"budget: '0\.1' there, '40' here"):
        analyze_command(**{**common, "out": legacy}, budget="40")
    (legacy / retention.SUMMARY).unlink()
    with pytest.raises(InputError, match="settings were not recorded"):
        analyze_command(**{**common, "out": legacy}, budget="40")
    fresh = tmp_path / "fresh"  # settings without records (a run that stopped before any): not binding
    fresh.mkdir()
    (fresh / "settings.json").write_text(json.dumps({"budget": "999"}))
    analyze_command(**{**common, "out": fresh}, budget="40")
    assert json.loads((fresh / "settings.json").read_text())["budget"] == "40"
