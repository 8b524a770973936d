"""GPU memory still held after each ``dynamickv bench`` configuration, one after another.

``dynamickv bench`` measures many configurations in one process. Memory a configuration leaves
behind (allocated, or reserved by the caching allocator in blocks it cannot hand back) is missing
from every later one, and a long context that fits alone then runs out of memory. This runs a
sequence of configurations through ``bench``'s own ``measure`` and, after each (garbage collected,
cache emptied), records what is still allocated and reserved above the weights and what the GPU has
free. Two defects were found this way (2026-12-01; ``docs/benchmarks.md``): the fused decode step's
weight fusion stranded 5.2 GiB of reserved memory on the Llama-3.1-70B shape, and every decoder's
new capture stream kept a cuBLAS workspace (+0.03 GiB per configuration). Usage (a CUDA machine)::

    python benchmarks/held_memory.py --config llama-3.1-70b \
        --sequence snapkv:4096,snapkv:8192,snapkv:16384,fullkv:16384,snapkv:24576,snapkv:32768 \
        --out docs/results/gpu/memory_1201/held_memory.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prefill_memory import build
from provenance import provenance

from dynamickv.devices import GIB, release


def held(devices: list[torch.device], weights: int) -> dict[str, float]:
    """Allocated and reserved GiB above ``weights`` and the GPU's free GiB, after a collection."""
    release(devices)  # collected, cache emptied
    return {
        "allocated_gib": (torch.cuda.memory_allocated() - weights) / GIB,
        "reserved_gib": (torch.cuda.memory_reserved() - weights) / GIB,
        "free_gib": torch.cuda.mem_get_info()[0] / GIB,
    }


def parse_sequence(text: str) -> list[tuple[str, int]]:
    """``"snapkv:4096,fullkv:16384"`` -> ``[("snapkv", 4096), ("fullkv", 16384)]``."""
    out = []
    for item in [x for x in text.split(",") if x]:
        method, _, length = item.rpartition(":")
        if not method or not length.isdigit():
            raise ValueError(f"{item!r} is not METHOD:LENGTH")
        out.append((method, int(length)))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="llama-3.1-70b")
    ap.add_argument("--sequence", default="snapkv:4096,snapkv:8192,snapkv:16384,fullkv:16384,snapkv:24576")
    ap.add_argument("--budget", type=int, default=1024)
    ap.add_argument("--mode", default="auto", help="the static decoder's mode (dynamickv bench --mode)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    try:
        sequence = parse_sequence(args.sequence)
    except ValueError as e:
        ap.error(f"--sequence: {e}")
    from dynamickv.bench import measure

    model, weights = build(ap, args.config)
    devices = [torch.device("cuda", torch.cuda.current_device())]
    result: dict[str, Any] = provenance("held_memory.py", args, "cuda") | {
        "weights_gib": weights / GIB,
        "built": held(devices, weights),
        "rows": [],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"built: {result['built']}", flush=True)
    for method, n in sequence:
        t0 = time.perf_counter()
        row = measure(model, method, args.budget, n, 8, devices, 8192, True, weights, 8, mode=args.mode)
        after = {"method": method, "tokens": n, "oom": bool(row.get("oom")), "oom_in": row.get("oom_in")}
        after |= {"static_mode": row.get("decode_static_mode"), "seconds": time.perf_counter() - t0}
        after |= {"held_after": held(devices, weights)}
        result["rows"].append(after)
        out.write_text(json.dumps(result, indent=1))
        print(json.dumps(after), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
