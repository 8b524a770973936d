"""The devices a model runs on: their clocks synchronised, and their memory counted, together.

Why: a model whose weights fill one GPU (a 70B in bf16) runs only with its layers spread over
several. A timer must then wait for every GPU the model uses, and memory must be counted on all of
them, not on the current one alone. Layers run one after another, so the devices take turns:
spreading adds memory, not speed.

``device`` below is a device (``"cpu"``, ``"cuda"``, ``"cuda:1"``) or a list of them. A list of
several is a model spread over them (:func:`placement`).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Sequence

import torch

GIB = 2**30

Devices = str | torch.device | Sequence[str | torch.device]


def resolve(device: str) -> list[torch.device]:
    """The devices ``--device`` names: ``auto`` is every visible GPU (the CPU when there is none);
    anything else is that one device."""
    if device == "auto":
        n = torch.cuda.device_count()
        return [torch.device("cuda", i) for i in range(n)] or [torch.device("cpu")]
    return [_indexed(torch.device(device))]


def _indexed(d: torch.device) -> torch.device:
    """``cuda`` as the GPU it means now (the current one); any other device as it is."""
    return torch.device("cuda", torch.cuda.current_device()) if d.type == "cuda" and d.index is None else d


def _cuda(device: Devices) -> list[torch.device]:
    many = [device] if isinstance(device, str | torch.device) else list(device)
    return list(dict.fromkeys(_indexed(d) for d in map(torch.device, many) if d.type == "cuda"))


def sync(device: Devices) -> None:
    """Wait for every CUDA device in ``device``."""
    for d in _cuda(device):
        torch.cuda.synchronize(d)


def release(device: Devices) -> None:
    """Free cached blocks and restart the peak counters on every CUDA device in ``device``."""
    gc.collect()
    cuda = _cuda(device)
    if cuda:
        torch.cuda.empty_cache()  # every GPU's cached blocks at once
    for d in cuda:
        torch.cuda.reset_peak_memory_stats(d)


def allocated(device: Devices) -> int:
    """Bytes allocated now, summed over the CUDA devices (0 on the CPU, where it is not measured)."""
    return sum(torch.cuda.memory_allocated(d) for d in _cuda(device))


def peak(device: Devices) -> int:
    """Peak bytes since the last :func:`release`, summed over the CUDA devices. The devices take
    turns, so the sum of their peaks is an upper bound of what was ever held at once."""
    return sum(torch.cuda.max_memory_allocated(d) for d in _cuda(device))


def peak_gib(device: Devices, base: int) -> float | None:
    """Peak allocation above ``base`` in GiB; ``None`` off CUDA, where it is not measured (a 0.0 would
    read as "no memory used")."""
    return (peak(device) - base) / GIB if _cuda(device) else None


def placement(n_layers: int, n_devices: int) -> list[int]:
    """Each layer's device index: contiguous blocks, as equal as the division allows (the earlier
    devices take one more), so that each device's share of weights and cache is about the same."""
    if n_devices < 1 or n_layers < n_devices:
        raise ValueError(f"cannot spread {n_layers} layers over {n_devices} devices")
    q, r = divmod(n_layers, n_devices)
    return [d for d in range(n_devices) for _ in range(q + (d < r))]


def on_device(device: torch.device) -> contextlib.AbstractContextManager:
    """``device`` made the current CUDA device for the block (nothing off CUDA). Streams and CUDA
    graphs are made on the current device, whatever device the tensors are on."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
