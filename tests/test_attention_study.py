"""The attention-mass study: masses add up, the needle's rank is the budget it needs, files and plots."""

from __future__ import annotations

import math

import pytest
import torch

from dynamickv.analysis import attention
from dynamickv.scoring import Observation


def _observation(n=64, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.ones(d)
    q = u.expand(1, 2, 8, d).clone()  # every query looks the same way
    k = torch.randn(1, 1, n, d, generator=g) * 0.1
    k[0, 0, 0] = u * 1.6  # a sink
    k[0, 0, 20:23] = u * 1.2  # a three-token needle
    return Observation(q, k, 1 / math.sqrt(d), None, 0)


def test_masses_add_up_and_the_needle_is_found():
    obs = _observation()
    stats = attention.layer_statistics(obs, window=8, sink=4, needle=[[20, 23]])
    assert stats["sink"] + stats["window"] + stats["rest"] == pytest.approx(1.0, abs=1e-5)
    assert stats["sink"] > stats["window"]
    assert stats["needle_mass"] > 0.5  # most of the rest is on the needle
    # forward pooling (kernel 12) lends the sink's score to tokens 1-11: those 12 rank first, then the
    # needle's three (ties to the lower position): 15 tokens hold it
    assert stats["needle_need"]["forward"] == 15
    assert stats["needle_need"]["avg"] <= 12
    assert stats["key_mass"] < 0.1  # nothing special before the needle here (8 of ~56 tokens)
    assert 0 <= stats["entropy"] <= 1 and stats["cover90"] >= 1


def test_study_records_and_plots(tmp_path):
    pytest.importorskip("matplotlib")
    from dynamickv.eval.base import Sample
    from evalkit import eval_model, eval_tokenizer

    tok = eval_tokenizer()
    model = eval_model(tok)
    prompt = " ".join(f"w{(5 * i) % 100 + 2}" for i in range(150))
    samples = [Sample("t", i, prompt, ["w7"], 4, "qa", chat_template=False) for i in range(2)]
    rows = attention.run_study(model, tok, samples, 40, ["snapkv:window=8", "dynamickv"], tmp_path)
    assert len(rows) == 2 and len(rows[0]["layers"]) == 4
    assert rows[0]["methods"]["dynamickv"]["kept"] != [150] * 4
    again = attention.run_study(model, tok, samples, 40, ["snapkv:window=8", "dynamickv"], tmp_path)
    assert again == rows  # resumed from the file, nothing recomputed
    paths = attention.plot(rows, tmp_path, "tiny")
    assert [p.name for p in paths] == ["attention_mass.png"] and paths[0].stat().st_size > 1000


def test_needle_plots_from_records(tmp_path):
    pytest.importorskip("matplotlib")
    layer = {
        "sink": 0.2,
        "window": 0.1,
        "rest": 0.7,
        "entropy": 0.5,
        "cover90": 30,
        "needle_mass": 0.01,
        "key_mass": 0.2,
        "needle_need": {"avg": 900, "max": 950, "forward": 40},
    }
    method = {"kept": [128] * 3, "needle_whole": [False, True, True], "needle_any_head": [True] * 3}
    rows = [{"layers": [layer] * 3, "methods": {"snapkv": method}}]
    s = attention.summary(rows)
    assert s["key_mass"] == [0.2] * 3 and s["needle_any_head_share"]["snapkv"] == [1.0] * 3
    assert s["needle_whole_share"]["snapkv"] == [0.0, 1.0, 1.0]
    paths = attention.plot(rows, tmp_path, "tiny")
    names = ["attention_mass.png", "needle_budget.png", "needle_key_mass.png"]
    assert [p.name for p in paths] == names and all(p.stat().st_size > 1000 for p in paths)
