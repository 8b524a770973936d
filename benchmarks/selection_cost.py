"""Token selection of a whole prefill, per method, without the model: what each cascade costs.

    python benchmarks/selection_cost.py --lengths 8192,32768 --repeats 2 --out docs/results/selection_cost.json \
        --methods "snapkv-decay,dynamickv-preference,cake,cake:update_every=4,snapkv:window=32;pooling=avg;kernel=5"
    python benchmarks/selection_cost.py --lengths 8192 --methods cake:update_every=32 \
        --out docs/results/selection_cost_once.json   # at 32k every layer's whole prompt exceeds 24 GiB

Why: ``cake`` re-allocates after every layer (CAKE's cascade), holds a layer's whole prompt until
its share is known, and reads 32 window queries with their mean and variance, where
``dynamickv-preference`` re-allocates every 4 layers from candidates capped at ``r_max * B`` and reads
8, and ``snapkv-decay`` selects once per layer. Re-allocating after layer ``l`` cuts every layer
``0..l`` again, so the cascade's work could grow with the square of the depth; ``cake:update_every=4``
and ``cake:update_every=32`` tell whether it does. This feeds a Llama-3.1-8B shape (32 layers,
32 query heads, 8 KV heads, head dim 128) of random queries and keys through each method's
``compress`` through the harness's replay path (every layer's observation, then every keep
operation applied to the cache) and times the whole prefill's selection: scores, pooling, top-k,
shares, cuts and K/V gathers. The model's forward pass is not included.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from provenance import provenance
from transformers import DynamicCache

from dynamickv.methods import PrefillInfo, get_method
from dynamickv.replay import PrefillRecord, derive_cache
from dynamickv.scoring import Observation

LAYERS, HEADS, KV_HEADS, DIM = 32, 32, 8, 128


def select_all(spec: str, keys: torch.Tensor, queries: list[torch.Tensor], budget: int) -> dict:
    """One prefill's selection through :func:`dynamickv.replay.derive_cache`, the path the evaluation
    harness takes: every layer's observation, then every keep operation applied to the cache (the
    K/V gathers included). Each call gets a fresh record whose observations hold exactly the
    method's window queries, so no attention computed for another method or window is reused."""
    n = keys.shape[-2]
    reads = get_method(spec).observation_queries
    cache = DynamicCache()
    for layer in range(LAYERS):
        cache.update(keys, keys, layer)  # one shared tensor: K/V values do not change the selection
    observations = {
        layer: Observation(queries[layer][..., -reads:, :], keys, DIM**-0.5, None, layer)
        for layer in range(LAYERS)
    }
    info = PrefillInfo(n=n, n_eff=n, num_layers=LAYERS, budget=0)
    record = PrefillRecord(
        cache, observations, list(range(LAYERS)), info, torch.zeros(1, 1), 0.0, None, None, n
    )
    sync(keys.device)
    t0 = time.perf_counter()
    _, stats = derive_cache(record, spec, budget)
    sync(keys.device)  # on a GPU the selection is asynchronous: time it to its end
    return {"seconds": time.perf_counter() - t0, "kept": stats.kept_per_layer}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", default="8192,32768")
    ap.add_argument("--methods", default="snapkv-decay,dynamickv-preference,cake")
    ap.add_argument("--budget", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the keys and queries live there)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    device = torch.device(args.device)

    torch.manual_seed(0)
    rows = []
    print(f"{'method':<24}{'n':>8}{'selection s':>14}{'tokens kept':>14}")
    for n in (int(x) for x in args.lengths.split(",")):
        keys = torch.randn(1, KV_HEADS, n, DIM).to(device)
        # one set of queries per layer, so every layer's attention (and its share) differs
        queries = [
            (torch.randn(1, HEADS, 32, DIM) * (0.5 + layer / LAYERS)).to(device) for layer in range(LAYERS)
        ]
        for spec in args.methods.split(","):
            runs = [select_all(spec, keys, queries, args.budget) for _ in range(args.repeats)]
            best = min(r["seconds"] for r in runs)
            kept = sum(runs[0]["kept"])
            rows.append(
                {"method": spec, "n": n, "seconds": best, "kept_total": kept, "kept": runs[0]["kept"]}
            )
            print(f"{spec:<24}{n:>8}{best:>14.3f}{kept:>14}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        record = {
            **provenance("selection_cost.py", args, device=args.device),
            "budget": args.budget,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "shape": [LAYERS, HEADS, KV_HEADS, DIM],
            "rows": rows,
        }
        args.out.write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
