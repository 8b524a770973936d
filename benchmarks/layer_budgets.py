"""How many tokens each layer keeps under layer-adaptive methods, on real RULER prompts.

    python benchmarks/layer_budgets.py --model smollm2-135m --task niah_multivalue --length 4096 \
        --samples 1 --seed 4004 --budgets 64,256 --out docs/results/layer_budgets_smol.json

Why: the allocation screens (docs/evaluation.md) compare layer-adaptive candidates by score only.
This shows the allocations themselves: DynamicKV's global top-k hands the budget to a few diffuse
layers, CAKE's preference shares (``allocation=preference``) spread it far more evenly. Prints one
line per (sample, method, budget) with the kept tokens of every layer (window included), and writes
them as JSON. Prompts are the raw protocol's (the whole prompt, question included, compressed).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from provenance import provenance

from dynamickv import compress
from dynamickv.eval import ruler
from dynamickv.models import load_model

D = "pooling=decay;kernel=12;quiet_sinks=4"
METHODS = (
    f"dynamickv:{D}",
    f"dynamickv:{D};min_ratio=0.75",
    "dynamickv-preference",
    f"dynamickv:{D};allocation=preference",
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--task", default="niah_multivalue")
    ap.add_argument("--length", type=int, default=4096)
    ap.add_argument("--samples", type=int, default=1)
    ap.add_argument("--seed", type=int, default=4004)
    ap.add_argument("--budgets", default="64,256")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    model, tok = load_model(args.model, progress=False)
    samples = ruler.generate(args.task, tok, args.length, args.samples, seed=args.seed)
    rows = []
    for i, sample in enumerate(samples):
        ids = tok(sample.prompt, return_tensors="pt").input_ids
        for spec in args.methods.split(","):
            for budget in (int(b) for b in args.budgets.split(",")):
                with torch.no_grad(), compress(model, spec, budget):
                    cache = model(input_ids=ids, use_cache=True).past_key_values
                kept = [int(layer.positions.shape[-1]) for layer in cache.layers]
                rows.append(
                    {"sample": i, "tokens": ids.shape[-1], "method": spec, "budget": budget, "kept": kept}
                )
                print(
                    f"{i} {spec} B={budget}: min {min(kept)} max {max(kept)} mean {sum(kept) / len(kept):.1f} {kept}"
                )
    if args.out:
        meta = provenance("layer_budgets.py", args)
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
