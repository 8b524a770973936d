"""Decoding a sample's configurations together (raw protocol) gives each one's own answer."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("tokenizers")

from evalkit import eval_model, eval_tokenizer, make_samples, run_grid
from tiny import one_thread

METHODS = ["snapkv:window=8", "pyramidkv", "dynamickv", "adakv:window=8", "streamingllm", "windowkv"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_thread()


def _predictions(path):
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    return {(r["uid"], r["method"], r["budget"]): r for r in rows}


def test_batched_decoding_equals_decoding_each_alone(tmp_path):
    tok = eval_tokenizer()
    model = eval_model(tok)
    model.generation_config.eos_token_id = 7  # some rows stop early, the others go on
    samples = make_samples(3, seed=4)
    for s in samples:
        s.max_new_tokens = 12
    kw = dict(methods=METHODS, budgets=[40, 64], protocol="raw")
    run_grid(samples, model, tok, tmp_path / "one", batch_decode=False, **kw)
    run_grid(samples, model, tok, tmp_path / "batch", batch_decode=True, **kw)
    one = _predictions(tmp_path / "one" / "predictions.jsonl")
    batch = _predictions(tmp_path / "batch" / "predictions.jsonl")
    assert one.keys() == batch.keys()
    for key, r in one.items():
        assert batch[key]["prediction"] == r["prediction"], key
        assert batch[key]["kept_tokens_per_layer"] == r["kept_tokens_per_layer"]
        assert batch[key].get("decode") == (None if key[1] == "fullkv" else "batched")
    answers = {r["prediction"] for r in one.values()}
    assert len(answers) > 3  # the configurations really answer differently
    assert json.loads((tmp_path / "batch" / "config.json").read_text())["batch_decode"] is True


@pytest.mark.parametrize("family", ["gemma3", "mistral"])
def test_sliding_window_model_decodes_configurations_together(tmp_path, capsys, family):
    """Sliding layers in the batched decoder forget what leaves their window, as decoding alone does:
    Gemma 3's uncompressed local layers, and a model whose every layer slides (compressed, per KV
    head). 40 new tokens also push the first generated ones out of a 32-token window."""
    tok = eval_tokenizer()
    gemma = family == "gemma3"
    window = {"layer_types": ["sliding_attention", "full_attention"] * 2} if gemma else {"sliding_window": 32}
    model = eval_model(tok, family, **window)
    samples = make_samples(2, seed=5)
    for s in samples:
        s.max_new_tokens = 40
    kw = dict(methods=["snapkv:window=8", "dynamickv", "streamingllm"], budgets=[24], protocol="raw")
    run_grid(samples, model, tok, tmp_path / "one", batch_decode=False, **kw)
    run_grid(samples, model, tok, tmp_path / "batch", batch_decode=True, **kw)
    assert "decoded alone" not in capsys.readouterr().err
    one = _predictions(tmp_path / "one" / "predictions.jsonl")
    batch = _predictions(tmp_path / "batch" / "predictions.jsonl")
    assert one.keys() == batch.keys() and len(one) == 2 * 4
    for key, r in one.items():
        assert batch[key]["prediction"] == r["prediction"], key
        assert batch[key].get("decode") == (None if key[1] == "fullkv" else "batched")
        if gemma:
            local, compressed = r["kept_tokens_per_layer"][0::2], r["kept_tokens_per_layer"][1::2]
            assert local == [31, 31]  # the local layers keep their window whatever the method
        else:
            compressed = r["kept_tokens_per_layer"]
            assert max(compressed) <= 31  # a sliding layer keeps at most what it can still see
        if key[1] != "fullkv":
            assert sum(compressed) == len(compressed) * 24  # the budget is spent on the compressed layers
    assert len({r["prediction"] for r in one.values()}) > 2  # the configurations answer differently
    assert json.loads((tmp_path / "batch" / "config.json").read_text())["batch_decode"] is True


def test_a_model_the_batched_decoder_cannot_hold_decodes_each_configuration_alone(
    tmp_path, capsys, monkeypatch
):
    from dynamickv.batch_decoder import BatchDecoder

    tok = eval_tokenizer()
    model = eval_model(tok)
    monkeypatch.setattr(BatchDecoder, "supports", staticmethod(lambda m: False))
    samples = make_samples(1, seed=2)
    run_grid(
        samples, model, tok, tmp_path / "r", methods=["snapkv:window=8"], budgets=[40], batch_decode=True
    )
    assert capsys.readouterr().err.count("each configuration is decoded alone") == 1
    assert all("decode" not in r for r in _predictions(tmp_path / "r" / "predictions.jsonl").values())
    assert json.loads((tmp_path / "r" / "config.json").read_text())["batch_decode"] is False
