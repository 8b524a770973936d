"""One evaluation at a time per output folder.

Two ``eval`` processes appending to the same ``predictions.jsonl`` would both compute everything and
write every line twice. The first takes ``<out>/.dynamickv.lock`` and keeps it until it ends; a second
is refused with the holder's pid. The lock is an exclusive ``flock`` on that file, so the kernel
releases it when its process ends, however it ends (``kill -9`` included); the pid written into the
file is for the message, and for the rare system without ``flock``, where a lock whose pid is no
longer running on this host is taken over as stale.

Taking the lock also proves that ``--out`` is writable, before any model is loaded.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from dynamickv.errors import InputError

LOCK_FILE = ".dynamickv.lock"

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

#: Folders this process holds (re-entrant: the CLI locks before loading, ``run`` locks again).
_HELD: dict[Path, int] = {}


def _holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _refuse(out: Path, holder: dict) -> InputError:
    who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, since {holder.get('started', '?')}"
    return InputError(
        f"another dynamickv eval is writing into {out} ({who}); wait for it to finish, or choose another "
        "--out"
    )


def _open_lock(out: Path) -> int:
    """Create ``out`` and open its lock file (an unwritable or full folder fails here, in one line)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        return os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise InputError(f"cannot write into --out {out}: {exc.strerror or exc}") from None


def _record(fd: int) -> None:
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    data = (json.dumps(info) + "\n").encode()
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        os.fsync(fd)
    except OSError as exc:  # a full disk shows here, before any model is loaded
        raise InputError(f"cannot write into --out: {exc.strerror or exc}") from None


@contextlib.contextmanager
def run_lock(out: str | Path) -> Iterator[None]:
    """Hold the output folder's lock for the duration of the block (re-entrant in one process)."""
    out = Path(out).resolve()
    if out in _HELD:
        _HELD[out] += 1
        try:
            yield
        finally:
            _HELD[out] -= 1
        return
    path = out / LOCK_FILE
    created = not out.exists()
    fd = _open_lock(out)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise _refuse(out, _holder(path)) from None
        else:  # pragma: no cover - no flock: a pid that is not running here is a stale lock
            holder = _holder(path)
            pid = holder.get("pid")
            if isinstance(pid, int) and pid != os.getpid():
                if holder.get("host") != socket.gethostname() or _alive(pid):
                    raise _refuse(out, holder)
        _record(fd)
        _HELD[out] = 1
        try:
            yield
        finally:
            del _HELD[out]
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # released: no pid left behind to mislead a reader
    finally:
        os.close(fd)  # closing releases the flock
        if created and [p.name for p in out.iterdir()] == [LOCK_FILE]:  # a refused run leaves nothing
            with contextlib.suppress(OSError):
                path.unlink()
                out.rmdir()
