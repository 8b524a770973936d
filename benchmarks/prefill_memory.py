"""Where a compressed prefill's GPU memory goes, at lengths that run out of it.

``dynamickv bench --config llama-3.1-70b`` on one H200 (131.4 GiB of random bf16 weights, 9 GiB
beside them) prefilled 16k tokens with 2.8 GiB above the weights and ran out of memory at 24k
(``docs/benchmarks.md``). The MLP already runs 8k positions at a time, so the growth from 16k to
24k should be a few GiB. This script finds out what was live when the allocation failed.

For each length it prefills once, as ``bench`` does (the method's ``Compressor``, MLP and norms in
``--chunk`` positions), with the allocator's history recorded. An out-of-memory observer takes a
snapshot at the failing allocation, and the report gives:

* what was asked for, what the allocator held (reserved) and what was live (allocated) then;
* the live blocks allocated during the prefill, summed by the innermost frame in ``transformers`` or
  ``dynamickv`` code that allocated them (the weights, allocated before recording, are left out);
* the reserved-but-free bytes (fragmentation: free memory in segments no request fits).

Run it twice to see whether fragmentation is the cause: as is, and with
``PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True``. Usage (a CUDA machine)::

    python benchmarks/prefill_memory.py --config llama-3.1-70b --lengths 16384,24576,32768 \
        --out docs/results/gpu/prefill_memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import provenance

from dynamickv.devices import GIB

OURS = ("transformers/", "dynamickv/")


def _where(frames: list[dict[str, Any]]) -> str:
    """The innermost frame in ``transformers`` or ``dynamickv`` code (``file:line function``)."""
    for f in frames:
        name = f.get("filename", "")
        if any(o in name for o in OURS):
            short = name.split("site-packages/")[-1].split("src/")[-1]
            return f"{short}:{f.get('line')} {f.get('name')}"
    return "elsewhere" if frames else "no history (before recording)"


def summarise(snapshot: dict[str, Any], top: int = 12) -> dict[str, Any]:
    """Reserved, allocated and fragmented bytes of a memory snapshot, and its recorded live blocks
    summed by the frame that allocated them (the ``top`` largest)."""
    reserved = allocated = 0
    by_site: Counter[str] = Counter()
    largest_free = 0
    for seg in snapshot["segments"]:
        reserved += seg["total_size"]
        for block in seg["blocks"]:
            if block["state"] == "active_allocated":
                allocated += block["size"]
                frames = block.get("frames") or []
                if frames:
                    by_site[_where(frames)] += block["size"]
            elif block["state"] == "inactive":
                largest_free = max(largest_free, block["size"])
    return {
        "reserved_gib": reserved / GIB,
        "allocated_gib": allocated / GIB,
        "fragmented_gib": (reserved - allocated) / GIB,
        "largest_free_block_gib": largest_free / GIB,
        "recorded_live_gib": sum(by_site.values()) / GIB,
        "by_site_gib": {k: v / GIB for k, v in by_site.most_common(top)},
    }


#: What the out-of-memory observer saw at the failing allocation of the current prefill.
_SEEN: dict[str, Any] = {}


def _observer(device: int, alloc: int, device_alloc: int, device_free: int) -> None:
    """Called by the allocator when an allocation fails, before the error unwinds anything."""
    _SEEN.update(requested_gib=alloc / GIB, device_free_gib=device_free / GIB)
    _SEEN["snapshot"] = torch.cuda.memory._snapshot()


@torch.inference_mode()
def prefill(model: Any, method: str, budget: int, n: int, chunk: int) -> dict[str, Any]:
    """One compressed prefill of ``n`` random tokens; a snapshot is taken if it runs out of memory."""
    from dynamickv.compressor import Compressor
    from dynamickv.devices import allocated, release
    from dynamickv.fast import chunked_prefill

    device = model.get_input_embeddings().weight.device
    ids = torch.randint(0, model.config.vocab_size, (1, n), device=device)
    release([device])
    base = allocated([device])
    _SEEN.clear()
    torch.cuda.memory._record_memory_history(max_entries=100_000, stacks="python")
    row: dict[str, Any] = {"tokens": n, "method": method, "budget": budget}
    t0 = time.perf_counter()
    try:
        with Compressor(model, method, budget), chunked_prefill(model, chunk):
            out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        torch.cuda.synchronize(device)
        row.update(oom=False, prefill_s=time.perf_counter() - t0)
        row["peak_above_weights_gib"] = (torch.cuda.max_memory_allocated(device) - base) / GIB
        del out
    except torch.OutOfMemoryError:
        row["oom"] = True
    finally:
        torch.cuda.memory._record_memory_history(enabled=None)
    if "snapshot" in _SEEN:
        row |= {k: v for k, v in _SEEN.items() if k != "snapshot"} | summarise(_SEEN.pop("snapshot"))
        row["live_above_weights_gib"] = row["allocated_gib"] - base / GIB
    release([device])
    return row


def build(ap: argparse.ArgumentParser, config: str) -> tuple[Any, int]:
    """``bench``'s random-weight model of ``config`` on the GPU in bf16, and its weight bytes; one
    line through ``ap`` where there is no GPU or no such configuration. Shared with
    ``held_memory.py``."""
    if not torch.cuda.is_available():
        ap.error("this measures CUDA memory: no CUDA device is visible")
    from dynamickv.bench import build_model
    from dynamickv.bench_configs import CONFIGS

    if config not in CONFIGS:
        ap.error(f"unknown --config {config!r}; known: {', '.join(CONFIGS)}")
    model = build_model(config, "cuda", torch.bfloat16)
    return model, sum(p.numel() * p.element_size() for p in model.parameters())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="llama-3.1-70b")
    ap.add_argument("--lengths", default="16384,24576,32768")
    ap.add_argument("--method", default="snapkv")
    ap.add_argument("--budget", type=int, default=1024)
    ap.add_argument("--chunk", type=int, default=8192, help="positions the MLP and norms run at a time")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    try:
        lengths = [int(x) for x in args.lengths.split(",") if x]
    except ValueError:
        ap.error(f"--lengths must be integers separated by commas, not {args.lengths!r}")
    t0 = time.perf_counter()
    model, weights = build(ap, args.config)
    torch._C._cuda_attach_out_of_memory_observer(_observer)
    free, total = torch.cuda.mem_get_info()
    result: dict[str, Any] = provenance("prefill_memory.py", args, "cuda") | {
        "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", ""),
        "weights_gib": weights / GIB,
        "free_after_build_gib": free / GIB,
        "total_gib": total / GIB,
        "build_s": time.perf_counter() - t0,
        "rows": [],
    }
    print(f"{args.config}: {weights / GIB:.1f} GiB of weights, {free / GIB:.2f} GiB free", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for n in lengths:
        row = prefill(model, args.method, args.budget, n, args.chunk)
        result["rows"].append(row)
        out.write_text(json.dumps(result, indent=1))
        print(json.dumps(row, indent=1), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
