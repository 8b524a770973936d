"""Checks of command-line values that need no model, so that a bad value fails in a second with one
clear line instead of after a model load (seconds to minutes) or with a traceback from deep inside
``transformers``.

Every check raises :class:`~dynamickv.errors.InputError` (the CLI prints ``error: ...``, exit 2).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import BinaryIO

from .errors import InputError

#: Attention implementations the compressor wraps (it reads the layer's queries and keys there).
ATTENTION = ("sdpa", "eager")
#: Share of undecodable bytes above which a context file is reported as not text.
_BINARY_SHARE = 0.01


def check_attention(name: str) -> str:
    """``sdpa`` or ``eager``; anything else (``flash_attention_2``, ``flex_attention``, a typo) is refused."""
    value = name.strip().lower()
    if value in ATTENTION:
        return value
    if value.startswith(("flash", "flex", "paged", "sdpa_")):
        raise InputError(
            f"--attn {name} is not supported: dynamickv wraps the model's own sdpa or eager attention to "
            "read the queries and keys it scores (use --attn sdpa: on a GPU it runs flash kernels where it can)"
        )
    raise InputError(f"unknown --attn value {name!r}: use sdpa or eager")


def check_device(name: str) -> str:
    """``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``auto``, checked against what this machine has."""
    import torch

    value = name.strip().lower()
    if value == "auto":
        return value
    try:
        device = torch.device(value)
    except (RuntimeError, ValueError):
        raise InputError(f"unknown --device {name!r}: use cpu, cuda, cuda:N, mps or auto") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is built without CUDA" if torch.version.cuda is None else "no GPU is visible"
            raise InputError(f"--device {name}: CUDA is not available ({why}); use --device cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise InputError(f"--device {name}: only {count} CUDA device(s) (cuda:0 to cuda:{count - 1})")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise InputError(f"--device {name}: MPS is not available on this machine; use --device cpu")
    elif device.type != "cpu":
        raise InputError(f"unsupported --device {name!r}: use cpu, cuda, cuda:N, mps or auto")
    return value


def check_positive(value: int | None, option: str) -> int | None:
    """``value`` if it is at least 1 (``None`` passes: the option's default rule applies)."""
    if value is not None and value < 1:
        raise InputError(f"{option} must be at least 1, got {value}")
    return value


def check_output_file(path: Path, option: str) -> Path:
    """A file the command will write at the end: refused now if it is a folder or its folder is
    missing or read-only, so that a long run does not end in a traceback with its results lost."""
    if path.is_dir():
        raise InputError(f"{option} {path} is a folder; give a file name")
    folder = path.parent
    if not folder.is_dir():
        raise InputError(f"{option} {path}: the folder {folder} does not exist")
    _probe_write(path, option)
    return path


def check_output_folder(path: Path, option: str) -> Path:
    """A folder the command will fill: created now, and written to once, so that a path that cannot
    hold the results fails before the model loads."""
    if path.exists() and not path.is_dir():
        raise InputError(f"{option} {path} exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the output folder {path}: {exc.strerror or exc}") from None
    _probe_write(path / ".dynamickv-write-probe", option)
    return path


def _probe_write(path: Path, option: str) -> None:
    """Open ``path`` for appending (removing it again if it was not there). Why a real write:
    permissions alone do not tell (root, /proc, a read-only mount)."""
    existed = path.exists()
    try:
        with path.open("a"):
            pass
    except OSError as exc:
        raise InputError(f"{option} {path}: cannot write there ({exc.strerror or exc})") from None
    if not existed:
        path.unlink()


def check_kvpress_path(path: str) -> str:
    """``--kvpress-path``: a ``PYTHONPATH`` (``os.pathsep``-separated) in which ``kvpress`` is found."""
    entries = [Path(p).expanduser() for p in path.split(os.pathsep) if p]
    if not any((p / "kvpress" / "__init__.py").is_file() for p in entries):
        raise InputError(
            f"--kvpress-path {path}: no kvpress package there (a folder holding kvpress/, "
            "e.g. from `pip install --target DIR kvpress==0.5.5`)"
        )
    return path


def check_truncate(value: str | None) -> str | None:
    """``--truncate``: ``None`` (refuse a prompt longer than the model) or ``middle`` (LongBench's rule)."""
    if value is None or value.strip().lower() in ("", "none"):
        return None
    if value.strip().lower() != "middle":
        raise InputError(f"unknown --truncate value {value!r}: use middle (or leave it out to refuse)")
    return "middle"


def _read_chunks(f: BinaryIO) -> bytes:
    """All of ``f``, one chunk per call. Why: a single ``read()`` of a pipe loops inside C until the
    writer closes it, so a Ctrl-C that lands between two of its reads waits for the writer; here it
    is raised before the next chunk."""
    parts = []
    while chunk := f.read1(1 << 16):
        parts.append(chunk)
    return b"".join(parts)


def read_context(path: Path) -> str:
    """The text of a context file (``-`` reads standard input).

    Refused: a missing path, a directory, an unreadable or empty file. A file that does not look like
    text (NUL bytes, or more than 1% of it not valid UTF-8) is read anyway, with a warning on stderr:
    the model will see replacement characters where the bytes were not text.
    """
    if str(path) == "-":
        data = _read_chunks(sys.stdin.buffer)
        where = "standard input"
    else:
        if not path.exists():
            raise InputError(f"context file not found: {path}")
        if path.is_dir():
            raise InputError(f"context file {path} is a directory; give a text file")
        try:
            with path.open("rb") as f:
                data = _read_chunks(f)
        except OSError as exc:
            raise InputError(f"cannot read context file {path}: {exc.strerror or exc}") from None
        where = str(path)
    text = data.decode("utf-8", errors="replace")
    bad = text.count("\ufffd") - data.decode("utf-8", errors="ignore").count("\ufffd")
    nul = data.count(b"\x00")
    if nul or bad > _BINARY_SHARE * max(len(text), 1):
        print(
            f"warning: {where} does not look like text ({nul} NUL bytes, {bad} invalid UTF-8 sequences "
            f"in {len(data)} bytes); using it anyway",
            file=sys.stderr,
        )
    if not text.strip():
        raise InputError(f"context file is empty: {where}")
    return text
