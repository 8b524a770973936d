"""The ``dynamickv bench`` result file: written after every measured row, and resumed.

A long benchmark (512k-token prefills take minutes each) must not lose its finished rows to a
Ctrl-C, a lost GPU lease or an out-of-memory kill. So ``--out`` is rewritten (atomically) after each
row with ``"complete": false``, and ``--resume`` measures only the (method, length) rows it lacks.
Rows are only resumed from a run made with the same settings, software and device: timings from two
machines or releases in one table would compare things that were never run side by side.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import InputError

#: ``meta`` keys that must match for rows to be resumed (compared where both files record them).
SETTINGS = (
    "config",
    "budget",
    "steps",
    "chunk",
    "graph",
    "mode",
    "device",
    "device_option",
    "batch",
    "distinct",
    "devices",
    "torch",
    "transformers",
)


def read(out: Path) -> dict[str, Any] | None:
    """The bench result at ``out``, or ``None`` when there is none; an unreadable file is an error."""
    if not out.is_file():
        return None
    try:
        result = json.loads(out.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot resume from {out}: it is not a bench result ({exc})") from None
    if not isinstance(result, dict) or not isinstance(result.get("meta"), dict) or "rows" not in result:
        raise InputError(f"cannot resume from {out}: it is not a dynamickv bench result (no meta and rows)")
    return result


def check_unfinished(out: Path, resume: bool) -> None:
    """Before anything runs: an interrupted run in ``out`` is continued with ``--resume``, never
    overwritten unsaid. A finished one is overwritten, as before."""
    if resume:
        read(out)  # an unreadable file fails now, not after the model is built
        return
    try:
        result = json.loads(out.read_text(encoding="utf-8")) if out.is_file() else None
    except (ValueError, UnicodeDecodeError):
        return
    if isinstance(result, dict) and result.get("complete") is False:
        done = len(result.get("rows") or [])
        raise InputError(
            f"--out {out} holds an interrupted bench ({done} rows measured); pass --resume to continue it, "
            "or choose another --out"
        )


def resumed_rows(out: Path, meta: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of the run in ``out`` (none if there is no file), refused if it was made otherwise."""
    previous = read(out)
    if previous is None:
        return []
    old = previous["meta"]
    differ = [k for k in SETTINGS if k in old and k in meta and old[k] != meta[k]]
    if differ:
        details = "; ".join(f"{k}: {old[k]!r} there, {meta[k]!r} here" for k in differ)
        raise InputError(
            f"cannot resume from {out}: it was made with other settings ({details}); use another --out"
        )
    meta["date"] = old.get("date", meta["date"])
    if "done" in old:  # the serving benchmark's finished (method, length) pairs
        meta["done"] = old["done"]
    meta["resumed"] = [*old.get("resumed", []), datetime.now(timezone.utc).isoformat(timespec="seconds")]
    return list(previous["rows"])


def key(row: dict[str, Any]) -> tuple[str, int]:
    """What a row measured: (method, prompt tokens)."""
    return str(row["method"]), int(row["tokens"])


def save(out: Path | None, meta: dict[str, Any], rows: list[dict[str, Any]], complete: bool) -> None:
    """Write the result; a kill mid-write leaves the previous file whole (write, then rename)."""
    if out is None:
        return
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps({"meta": meta, "rows": rows, "complete": complete}, indent=1, allow_nan=False))
    os.replace(tmp, out)
