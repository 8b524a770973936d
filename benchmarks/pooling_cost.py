"""What each pooling costs next to the scoring it follows, per layer, on this machine.

    python benchmarks/pooling_cost.py --lengths 32768,131072 --out docs/results/pooling_cost.json

Why: ``snapkv-decay`` (the recommended method) pools with ``decay`` and quiet sinks, a loop of
``4 * kernel`` shifted maxima where ``forward`` pooling is one ``max_pool1d``. This times, for one
layer of a Llama-3.1-8B shape (32 query heads, 8 KV heads, head dim 128, an 8-query window), the
observation-window attention scores, each pooling, and the top-k that follows, as the mean of
``--repeats`` runs after one warm-up.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from provenance import provenance

from dynamickv.scoring import Observation, pool_scores


def _time(fn, repeats: int, device: torch.device) -> float:
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / repeats * 1e3


def measure(n: int, repeats: int, device: torch.device) -> dict[str, float]:
    g = torch.Generator(device="cpu").manual_seed(0)
    q = torch.randn(1, 32, 8, 128, generator=g).to(device)
    k = torch.randn(1, 8, n, 128, generator=g).to(device)
    s = torch.rand(1, 8, n, generator=g).to(device)
    quiet = torch.zeros(1, 1, n, dtype=torch.bool, device=device)
    quiet[..., :4] = True
    cases = {
        "attention scores (w=8)": lambda: Observation(q, k, 128**-0.5, None, 0).scores(8),
        "forward pooling (k=12)": lambda: pool_scores(s, 12, "forward"),
        "decay pooling (k=12)": lambda: pool_scores(s, 12, "decay"),
        "decay + quiet sinks": lambda: pool_scores(s, 12, "decay", quiet),
        "top-k (B=128)": lambda: torch.topk(s, 128, dim=-1),
    }
    return {name: _time(fn, repeats, device) for name, fn in cases.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", default="32768,131072")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    device = torch.device(args.device)
    lengths = [int(x) for x in args.lengths.split(",")]
    rows = {n: measure(n, args.repeats, device) for n in lengths}
    names = list(next(iter(rows.values())))
    print("| per layer, ms | " + " | ".join(f"n = {n}" for n in lengths) + " |")
    print("|---|" + "---:|" * len(lengths))
    for name in names:
        print(f"| {name} | " + " | ".join(f"{rows[n][name]:.2f}" for n in lengths) + " |")
    if args.out:
        record = {
            **provenance("pooling_cost.py", args, args.device),
            "ms_per_layer": {str(n): r for n, r in rows.items()},
        }
        args.out.write_text(json.dumps(record, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
