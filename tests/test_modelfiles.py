"""Broken model files get one line naming the file (and, for dynamickv's converted copies, the hint to
delete them), through ``load_model`` and through the CLI; the weights fingerprint tells weights apart."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest

from dynamickv import cli
from dynamickv.errors import ModelFileError
from dynamickv.modelfiles import weights_fingerprint
from dynamickv.models import EMBEDDED, SOURCE_FILE, EmbeddedModel, PackagedFile, load_model
from tiny import save_tiny_model


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("good") / "model")


def _copy(good, tmp_path, name="model"):
    return shutil.copytree(good, tmp_path / name)


def _truncate(path, keep=0.5):
    os.truncate(path, int(path.stat().st_size * keep))


def _tiny_gguf(path):
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(128)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((64, 16), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _variant(kind, good, tmp_path):
    """A broken model of ``kind``: ``(--model argument, expected message)``."""
    if kind.endswith("gguf"):
        path = tmp_path / f"{kind}.gguf"
        if kind == "empty-gguf":
            path.write_bytes(b"")
            return path, "is empty: not a GGUF model"
        if kind == "random-gguf":
            path.write_bytes(os.urandom(4096).replace(b"GGUF", b"XXXX"))
            return path, "is not a GGUF file"
        _tiny_gguf(path)
        _truncate(path, 0.05)
        return path, "cannot read the GGUF file"
    model = _copy(good, tmp_path)
    if kind == "truncated-weights":
        _truncate(model / "model.safetensors")
        return model, "model.safetensors is truncated"
    if kind == "garbage-weights":
        (model / "model.safetensors").write_bytes(os.urandom(2048))
        return model, "is truncated or not a safetensors file"
    if kind == "no-weights":
        (model / "model.safetensors").unlink()
        return model, "has no weights"
    if kind == "invalid-config":
        (model / "config.json").write_text('{"model_type": "llama",')
        return model, "config.json is not valid JSON"
    if kind == "config-without-type":
        (model / "config.json").write_text('{"hidden_size": 64}')
        return model, "has no model_type"
    if kind == "no-tokenizer":
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (model / name).unlink()
        return model, "has no tokenizer files"
    raise AssertionError(kind)


KINDS = [
    "truncated-weights",
    "garbage-weights",
    "no-weights",
    "invalid-config",
    "config-without-type",
    "no-tokenizer",
    "empty-gguf",
    "random-gguf",
    "truncated-gguf",
]


@pytest.mark.parametrize("kind", KINDS)
def test_broken_model_files_are_one_line(kind, good, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DYNAMICKV_CACHE", str(tmp_path / "cache"))
    model, message = _variant(kind, good, tmp_path)
    with pytest.raises(ModelFileError, match=message.replace(".", r"\.")):
        load_model(str(model), progress=False)
    ctx = tmp_path / "ctx.txt"
    ctx.write_text("w1 w2 w3")
    assert cli.run(["generate", "-c", str(ctx), "-q", "w1", "--model", str(model)]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in err


def test_corrupted_converted_cache_entry_says_to_delete_it(good, tmp_path, monkeypatch):
    """An embedded model's converted copy whose weights were cut short (a full disk, a killed copy)."""
    sha = hashlib.sha256(b"the gguf").hexdigest()
    entry = EmbeddedModel(
        "fake-embedded", "test", ("fake==1",), "fake.gguf", sha, "none", (PackagedFile("x"),)
    )
    monkeypatch.setitem(EMBEDDED, entry.name, entry)
    target = tmp_path / "cache" / "models" / entry.name
    shutil.copytree(good, target)
    (target / SOURCE_FILE).write_text(json.dumps({"sha256": sha, "kind": "embedded"}))
    _truncate(target / "model.safetensors", 0.3)
    with pytest.raises(ModelFileError) as exc:
        load_model(entry.name, cache_dir=tmp_path / "cache", progress=False)
    assert "is truncated" in str(exc.value)
    assert f"delete it (rm -r {target})" in str(exc.value)
    shutil.rmtree(target)  # what the hint says: the entry is gone, the next run would convert again


def test_weights_fingerprint(good, tmp_path):
    first = weights_fingerprint(good)
    assert (
        len(first) == 16 and weights_fingerprint(_copy(good, tmp_path, "copy")) == first
    )  # content, not path
    other = save_tiny_model(tmp_path / "other", seed=1)  # same shapes and header, other values
    assert weights_fingerprint(other) != first
