"""A model folder's files, checked before ``transformers`` reads them, and a fingerprint of its weights.

Why check first: ``from_pretrained`` on a truncated safetensors file, an invalid ``config.json`` or a
folder without tokenizer files fails deep inside ``transformers`` with a traceback (or, for a missing
tokenizer, with a message about the hub). Reading the few bytes that tell these cases apart is cheap,
and each gets one line that says which file is wrong and what to do. A folder that is dynamickv's own
converted copy of a GGUF gets the hint to delete it: the next run converts it again.

Why a fingerprint: ``eval --resume`` appends to a run; if the weights at the same path changed, the
predictions of two models would be mixed in one table. Hashing gigabytes on every start would cost
seconds per GB, so the fingerprint hashes what changes whenever weights do: each weight file's name,
size and header (tensor names, shapes, dtypes, offsets) and 16 blocks of 64 KiB spread over its data.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

from .errors import ModelFileError

#: Files any of which lets ``AutoTokenizer`` build a tokenizer offline.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "tokenizer.tiktoken")
#: Written by dynamickv into every converted model folder (see :mod:`dynamickv.models`).
_SOURCE_FILE = "dynamickv_source.json"
_MAX_HEADER = 100 * 2**20  # safetensors refuses headers above 100 MB too
_SAMPLES, _BLOCK = 16, 64 * 1024

#: What reading a model's files raises when they are corrupt or not what they claim to be, beyond
#: what the checks below see (reported as one line, the original exception chained).
READ_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ValueError,
    KeyError,
    IndexError,
    TypeError,
    RuntimeError,
    EOFError,
    struct.error,
)
try:
    from safetensors import SafetensorError

    READ_ERRORS = (*READ_ERRORS, SafetensorError)
except ImportError:  # pragma: no cover - safetensors comes with transformers
    pass


def describe_read_error(exc: BaseException) -> str:
    """``Type: first line of the message`` of an exception raised while reading model files."""
    name = type(exc).__name__
    if name == "error":  # struct.error and friends
        name = f"{type(exc).__module__}.error"
    text = str(exc).strip()
    return f"{name}: {text.splitlines()[0]}" if text else name


def converted_hint(model_dir: Path) -> str:
    """The advice for a broken folder: delete it when it is dynamickv's converted copy."""
    if (model_dir / _SOURCE_FILE).is_file():
        return (
            f"; it is dynamickv's converted copy of a GGUF: delete it (rm -r {model_dir}) and run again "
            "to convert it anew"
        )
    return ""


def check_model_dir(model_dir: Path) -> None:
    """Raise :class:`ModelFileError` naming the first unusable file of a model folder.

    Checked: ``config.json`` is a JSON object with a ``model_type``; the weights exist (safetensors,
    sharded or not, or PyTorch ``.bin``) and every safetensors file has a readable header and is as
    long as the header says; a tokenizer file exists.
    """
    hint = converted_hint(model_dir)
    config_path = model_dir / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except ValueError as exc:  # also UnicodeDecodeError
        raise ModelFileError(f"{config_path} is not valid JSON ({exc}){hint}") from None
    except OSError as exc:
        raise ModelFileError(f"cannot read {config_path}: {exc.strerror or exc}{hint}") from None
    if not isinstance(config, dict) or not config.get("model_type"):
        raise ModelFileError(f"{config_path} has no model_type: not a transformers model configuration{hint}")
    for path in weight_files(model_dir):
        if path.suffix == ".safetensors":
            check_safetensors(path, hint)
    if not any((model_dir / name).is_file() for name in TOKENIZER_FILES):
        raise ModelFileError(
            f"model folder {model_dir} has no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...): "
            f"copy the tokenizer of the model into it{hint}"
        )


def weight_files(model_dir: Path) -> list[Path]:
    """The weight files ``from_pretrained`` reads (the shards an index names, else every safetensors
    file, else ``pytorch_model*.bin``); :class:`ModelFileError` if there are none or a shard is missing."""
    hint = converted_hint(model_dir)
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = model_dir / index_name
        if not index.is_file():
            continue
        try:
            names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ModelFileError(f"{index} is not a valid weight index ({exc}){hint}") from None
        missing = [n for n in names if not (model_dir / n).is_file()]
        if missing:
            raise ModelFileError(
                f"{model_dir}: weight file(s) {', '.join(missing[:3])} named in {index_name} are missing{hint}"
            )
        return [model_dir / n for n in names]
    files = sorted(model_dir.glob("*.safetensors")) or sorted(model_dir.glob("pytorch_model*.bin"))
    if not files:
        raise ModelFileError(f"model folder {model_dir} has no weights (*.safetensors){hint}")
    return files


def _safetensors_header(path: Path, hint: str) -> tuple[bytes, int]:
    """``(header bytes, expected file size)`` of a safetensors file; :class:`ModelFileError` if unreadable."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        if length < 2 or length > min(_MAX_HEADER, size - 8):
            what = "is empty" if size == 0 else "is truncated or not a safetensors file (bad header length)"
            raise ModelFileError(f"{path} {what}{hint}")
        raw = fh.read(length)
    try:
        header = json.loads(raw)
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        raise ModelFileError(f"{path} has a corrupt header ({type(exc).__name__}){hint}") from None
    return raw, 8 + length + end


def check_safetensors(path: Path, hint: str = "") -> None:
    """Raise :class:`ModelFileError` if ``path`` is not a complete safetensors file (size checked
    against the header: a copy or download cut short is caught here)."""
    _, expected = _safetensors_header(path, hint)
    size = path.stat().st_size
    if size < expected:
        raise ModelFileError(f"{path} is truncated: {size} bytes, its header describes {expected}{hint}")


def check_gguf(path: Path) -> None:
    """Raise :class:`ModelFileError` for an empty file or one without the GGUF magic bytes (the rest
    of the format is checked by the conversion, whose errors are reported as a corrupt file)."""
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if not magic:
        raise ModelFileError(f"{path} is empty: not a GGUF model")
    if magic != b"GGUF":
        raise ModelFileError(f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF')")


def weights_fingerprint(model_dir: str | Path) -> str:
    """A short hash identifying the weights of a model folder (see the module docstring for what it
    reads); the same files give the same fingerprint wherever they are."""
    model_dir = Path(model_dir)
    digest = hashlib.sha256()
    for path in weight_files(model_dir):
        size = path.stat().st_size
        digest.update(f"{path.name}\0{size}\0".encode())
        with open(path, "rb") as fh:
            if path.suffix == ".safetensors":
                header, _ = _safetensors_header(path, converted_hint(model_dir))
                digest.update(header)
            for i in range(_SAMPLES):
                fh.seek(max(0, (size - _BLOCK) * i // max(1, _SAMPLES - 1)))
                digest.update(fh.read(_BLOCK))
    return digest.hexdigest()[:16]
