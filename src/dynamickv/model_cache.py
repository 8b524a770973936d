"""The converted-model cache: where converted models live, and GGUF -> safetensors conversion.

Why a cache: dequantizing a GGUF takes tens of seconds while loading safetensors takes about one,
and the methods patch plain ``transformers`` attention modules, not GGUF-packed ones. A converted
directory is built in a temporary directory and moved into place; its ``dynamickv_source.json``
(written last) marks it complete, so an interrupted conversion is never mistaken for a finished one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from dynamickv.errors import ModelFileError
from dynamickv.modelfiles import READ_ERRORS, describe_read_error

#: Written (last) into every converted model directory; its presence marks a complete cache entry.
SOURCE_FILE = "dynamickv_source.json"
_CACHE_FORMAT = 1
_HASH_CHUNK = 8 * 1024 * 1024


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


def _convert_gguf(
    gguf_path: Path, out_dir: Path, *, progress: bool, tokenizer_from: Path | None = None
) -> None:
    """Dequantize ``gguf_path`` and write a plain ``from_pretrained`` directory to ``out_dir``.

    ``from_pretrained(gguf_file=...)`` is not used for the weights: in transformers 5.x it needs
    ``accelerate`` and keeps the weights GGUF-packed, and such a model refuses ``save_pretrained``.
    Instead the model is built from the GGUF's config on the meta device (no memory, no random
    init) and the dequantized float32 tensors are assigned into it -- one copy of the weights in
    memory instead of two. The tokenizer does come from ``AutoTokenizer.from_pretrained(gguf_file=)``,
    or from the folder ``tokenizer_from`` where given.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    folder, fname = gguf_path.parent, gguf_path.name
    try:  # a truncated or corrupt GGUF fails anywhere in here, with whatever the parser tripped on
        config = AutoConfig.from_pretrained(folder, gguf_file=fname)
        if tokenizer_from is None:
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
        else:
            tokenizer = AutoTokenizer.from_pretrained(tokenizer_from)
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
    check_tokenizer_round_trip(tokenizer, AutoTokenizer.from_pretrained(out_dir), gguf_path.name)


#: Words, digits, punctuation, a double space and non-ASCII text: a tokenizer that lost its merges,
#: its normalizer or its BOS rule splits this differently.
TOKENIZER_PROBE = "The special magic number for quiet-lake is 7412093.  VAR QPE = 64676 ; naïve café, 東京."


def check_tokenizer_round_trip(tokenizer: Any, reloaded: Any, what: str) -> None:
    """Raise :class:`ModelFileError` unless the saved tokenizer, read back, is the one converted.

    Why: transformers 5.17 reads Gemma 3's GGUF tokenizer as a Unigram model, saves it, and reads the
    saved folder back as a BPE tokenizer without merges, which splits text into single characters
    (a short test sentence: 74 tokens instead of 39). Every prompt would be silently wrong; the
    cached model would be kept for good. The chat template, which makes an instruct model usable,
    must survive the same round trip.
    """
    import transformers

    want = tokenizer(TOKENIZER_PROBE)["input_ids"]
    got = reloaded(TOKENIZER_PROBE)["input_ids"]
    if got != want:
        raise ModelFileError(
            f"transformers {transformers.__version__} does not save the tokenizer of {what} faithfully: "
            f"read back, it splits a test sentence into {len(got)} tokens instead of {len(want)}; "
            "use a newer transformers (5.24.0 converts it correctly) or a model folder with its own tokenizer"
        )
    if tokenizer.chat_template is not None and reloaded.chat_template != tokenizer.chat_template:
        raise ModelFileError(f"the chat template of {what} was lost when saving the tokenizer")


def _build_cached(
    target: Path,
    *,
    sha256: str,
    source: dict,
    make_gguf: Callable[[Path], Path],
    progress: bool,
    tokenizer_from: Path | None = None,
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
        _convert_gguf(gguf_path, out_dir, progress=progress, tokenizer_from=tokenizer_from)
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
