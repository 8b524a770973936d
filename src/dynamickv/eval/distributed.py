"""Sharded evaluation under ``torchrun`` or ``accelerate launch``: each rank takes its share of samples.

Why not a home-made launcher: both launchers already start one process per GPU and export ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address; we read those, join a ``gloo`` process group
(it only carries barriers, so it works for CPU and CUDA ranks alike), and split the *samples*, never a
sample's configurations, so each sample keeps its single shared prefill.

Files: while running, rank ``r`` appends to ``predictions.rank{r}.jsonl`` (one writer per file, fsynced
per line). At the end rank 0 merges every shard into ``predictions.jsonl`` in the single-process order
(samples, then the grid) and removes the shards, so a sharded run leaves exactly the files a
single-process run leaves. The ranks take the samples task by task in turn (:func:`interleave`), so a run
cut short has covered every task. A run killed midway leaves its shard files; ``--resume`` (with any number of
ranks, one included) first folds them into ``predictions.jsonl``, so nothing is lost or duplicated.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

SHARD_GLOB = "predictions.rank*.jsonl"


@dataclass(frozen=True)
class Shard:
    """This process's place in the launch: ``rank`` of ``world`` processes, ``local_rank`` on its host."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def take(self, items: list) -> list:
        """This rank's share: every ``world``-th item from ``rank`` (balanced to within one item)."""
        return items[self.rank :: self.world]


def interleave(items: list, key: Callable[[Any], Any]) -> list:
    """``items`` taken round-robin over their ``key`` groups (each group keeps its order).

    Why: a sharded run cut short (a GPU lease running out) has done the first items of every rank's
    share. In the benchmark's order (task by task) those are the first tasks, whole, and the last
    tasks not at all; interleaved, the same work covers every task with fewer samples each. The merge
    writes ``predictions.jsonl`` in the single-process order whatever order the ranks worked in.
    """
    groups: dict[Any, list] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    queues = list(groups.values())
    return [q[i] for i in range(max(map(len, queues), default=0)) for q in queues if i < len(q)]


def current_shard() -> Shard:
    """The shard the launcher describes in the environment (a single process when there is none)."""

    def env(name: str, default: int) -> int:
        value = os.environ.get(name)
        try:
            return int(value) if value not in (None, "") else default
        except ValueError:
            raise ValueError(f"{name}={value!r} is not an integer") from None

    world = env("WORLD_SIZE", 1)
    rank = env("RANK", 0)
    local = env("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"inconsistent launch environment: RANK={rank}, WORLD_SIZE={world}")
    return Shard(rank, world, local)


def init(shard: Shard) -> None:
    """Join the launcher's process group (gloo) when there is more than one rank."""
    import torch.distributed as dist

    if shard.active and not dist.is_initialized():
        dist.init_process_group("gloo", rank=shard.rank, world_size=shard.world)


def barrier(shard: Shard) -> None:
    import torch.distributed as dist

    if shard.active and dist.is_initialized():
        dist.barrier()


def close(shard: Shard) -> None:
    import torch.distributed as dist

    if shard.active and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def main_first(shard: Shard) -> Iterator[None]:
    """Rank 0 runs the block first (e.g. filling an on-disk cache), then the others."""
    if not shard.main:
        barrier(shard)
    try:
        yield
    finally:
        if shard.main:
            barrier(shard)


def shard_device(device: str, shard: Shard) -> str:
    """``cuda`` means this rank's GPU (``LOCAL_RANK`` modulo the GPUs visible); other devices are kept."""
    if device == "cuda" and shard.active and torch.cuda.is_available():
        index = shard.local_rank % torch.cuda.device_count()
        torch.cuda.set_device(index)  # streams and CUDA graphs go to the current GPU: make it this rank's
        return f"cuda:{index}"
    return device


def shard_file(out: str | Path, rank: int) -> Path:
    return Path(out) / f"predictions.rank{rank}.jsonl"


def shard_files(out: str | Path) -> list[Path]:
    return sorted(Path(out).glob(SHARD_GLOB))


__all__ = [
    "Shard",
    "barrier",
    "close",
    "current_shard",
    "init",
    "interleave",
    "main_first",
    "shard_device",
    "shard_file",
    "shard_files",
]
