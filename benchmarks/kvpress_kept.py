"""Which prompt tokens does kvpress 0.5.5 keep, per layer and KV head, and are they ours at matched
settings? Two processes, as for ``kvpress_quality_peer.py`` (kvpress pins ``transformers<5.3``):

    # 1. kvpress's side: the kept positions of each press at each budget
    PYTHONPATH=$KVSITE python benchmarks/kvpress_kept.py kvpress --model-dir DIR \\
        --prompts peer_prompts.jsonl --budgets 64,128,256 --limit 8 --out kvpress_kept.jsonl
    # 2. our side: the same prompts through dynamickv's matching method, compared
    python benchmarks/kvpress_kept.py compare --model NAME --prompts peer_prompts.jsonl \\
        --kvpress kvpress_kept.jsonl --out kept_compare.json

kvpress does not record which positions it keeps: a press gathers the kept keys and values. The
kvpress side therefore prefills each prompt once without a press and reads each kept key's position
back by finding the identical key (same process, same kernels, float32: the press changes no key it
keeps; a key found nowhere, or at two positions, is counted and reported, never guessed).

Pairs compared (kvpress's name -> dynamickv's spec; kvpress pools by average only):

* ``kvpress-snapkv:w32k7`` -> ``snapkv:window=32;kernel=7;pooling=avg``
* ``kvpress-snapkv`` (its defaults) -> ``snapkv:window=64;kernel=5;pooling=avg``
* ``kvpress-streamingllm`` -> ``streamingllm``

The budget is matched as in the quality peer (``kvpress_quality_peer.matched_ratio``: exactly ``B``
tokens; the 2026-11-30 Gemma run, before it, passed ``1 - B / n``, with which floating point made
kvpress keep ``B - 1`` for some ``n``). For every prompt, press, budget, compressed layer and KV head
it counts whether the two sets of kept positions are equal, whether kvpress's lies within ours,
whether it is ours less one token, and their overlap (shared / kvpress's count). Run on CPU in float32: the two libraries run
different ``transformers`` releases, and a score tie broken differently by a last-bit difference is
the one expected source of a difference. ``--device cuda`` runs both sides on a GPU, still in float32
(``benchmarks/gpu_kvpress_kept.sh``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

PAIRS = {
    "kvpress-snapkv:w32k7": "snapkv:window=32;kernel=7;pooling=avg",
    "kvpress-snapkv": "snapkv:window=64;kernel=5;pooling=avg",
    "kvpress-streamingllm": "streamingllm",
}


def _prompts(path: Path, limit: int | None) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows[:limit] if limit else rows


def positions_of(kept: torch.Tensor, full: torch.Tensor) -> tuple[list[list[int]], int]:
    """Each kept key's position in ``full`` (``[heads, n, d]``), per head, sorted; and how many kept
    keys matched no position or several (then left out)."""
    heads: list[list[int]] = []
    unmatched = 0
    for h in range(full.shape[0]):
        equal = (kept[h].unsqueeze(1) == full[h].unsqueeze(0)).all(-1)  # [kept, n]
        hits = equal.sum(-1)
        unmatched += int((hits != 1).sum())
        heads.append(sorted(int(i) for i in equal[hits == 1].float().argmax(-1).tolist()))
    return heads, unmatched


@torch.inference_mode()
def kvpress_side(args: argparse.Namespace) -> None:
    import kvpress_quality_peer as peer  # same folder; imports no dynamickv code

    peer._stub_optional_imports()
    import kvpress
    import transformers
    from transformers import AutoModelForCausalLM, DynamicCache

    transformers.utils.logging.disable_progress_bar()

    model = AutoModelForCausalLM.from_pretrained(
        args.model_dir, dtype=torch.float32, attn_implementation="sdpa"
    )
    model.to(args.device).eval()
    factories = peer.presses(kvpress)
    budgets = [int(b) for b in args.budgets.split(",")]
    with open(args.out, "w", encoding="utf-8") as fh:
        for p in _prompts(args.prompts, args.limit):
            head = torch.tensor([p["head"]], device=args.device)
            n = head.shape[1]
            plain = DynamicCache()
            model(input_ids=head, past_key_values=plain, use_cache=True, logits_to_keep=1)
            for name in PAIRS:
                for b in budgets:
                    cache = DynamicCache()
                    press = factories[name](peer.matched_ratio(b, n))
                    with peer.applied(press, model, "skip"):
                        model(input_ids=head, past_key_values=cache, use_cache=True, logits_to_keep=1)
                    layers = {}
                    unmatched = 0
                    for i, (mine, full) in enumerate(zip(cache.layers, plain.layers, strict=True)):
                        if mine.keys.shape[-2] == full.keys.shape[-2]:
                            continue  # not compressed (a sliding layer, or a prompt within budget)
                        heads, missed = positions_of(mine.keys[0], full.keys[0])
                        layers[str(i)] = heads
                        unmatched += missed
                    row = {"uid": p["uid"], "press": name, "budget": b, "tokens": n, "layers": layers}
                    fh.write(json.dumps({**row, "unmatched_keys": unmatched}) + "\n")
                    fh.flush()
            print(f"{p['uid']}: {n} tokens", file=sys.stderr)


@torch.inference_mode()
def compare_side(args: argparse.Namespace) -> dict[str, Any]:
    from dynamickv.cache import compressed_layers, output_cache
    from dynamickv.compressor import Compressor
    from dynamickv.errors import BudgetError
    from dynamickv.models import load_model

    model, _ = load_model(args.model, dtype=torch.float32, device=args.device)
    prompts = {p["uid"]: p for p in _prompts(args.prompts, None)}
    theirs = [json.loads(line) for line in args.kvpress.read_text().splitlines() if line.strip()]
    cells: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for r in theirs:
        spec = PAIRS[r["press"]]
        ids = torch.tensor([prompts[r["uid"]]["head"]], device=args.device)
        cell = cells[f"{r['press']}@{r['budget']}"]
        try:
            compressor = Compressor(model, spec, budget=r["budget"])
        except BudgetError:  # e.g. kvpress's 64-token window at B = 64: it keeps the window alone
            cell["refused_by_dynamickv"] += 1
            continue
        with compressor:
            out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        ours = {str(i): layer.kept_positions() for i, layer in compressed_layers(output_cache(out)).items()}
        cell["unmatched_keys"] += r["unmatched_keys"]
        cell["layers_compared"] += len(r["layers"])
        cell["layers_missing"] += len(set(r["layers"]) ^ set(ours))
        for layer, heads in r["layers"].items():
            for h, kept in enumerate(heads):
                mine = set(ours.get(layer, [[]] * len(heads))[h])
                cell["heads"] += 1
                cell["heads_equal"] += set(kept) == mine
                # kvpress keeps int(n * (1 - ratio)) tokens: with the ratio 1 - B / n of runs before
                # 2026-11-30 that was B - 1 for some n (floating point), its set then ours less one
                cell["heads_kvpress_within_ours"] += set(kept) <= mine
                cell["heads_one_short"] += set(kept) < mine and len(mine) - len(kept) == 1
                cell["shared"] += len(set(kept) & mine)
                cell["kvpress_kept"] += len(kept)
                cell["ours_kept"] += len(mine)
    result = {
        "model": args.model,
        "pairs": PAIRS,
        "cells": {k: dict(v) for k, v in sorted(cells.items())},
        "command": " ".join(sys.argv),
    }
    print(
        f"{'press@budget':28} {'heads equal':>14} {'within ours':>11} {'one short':>9} {'overlap':>8} "
        f"{'kept kvpress/ours':>18} {'unmatched':>9}"
    )
    for name, c in result["cells"].items():
        if not c.get("heads"):
            print(f"{name:28} refused by dynamickv on {int(c['refused_by_dynamickv'])} prompts")
            continue
        overlap = c["shared"] / max(c["kvpress_kept"], 1)
        print(
            f"{name:28} {int(c['heads_equal']):>6}/{int(c['heads']):<7} {int(c['heads_kvpress_within_ours']):>11} "
            f"{int(c['heads_one_short']):>9} {overlap:8.4f} "
            f"{int(c['kvpress_kept']):>9}/{int(c['ours_kept']):<8} {int(c['unmatched_keys']):>9}"
        )
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="side", required=True)
    k = sub.add_parser("kvpress")
    k.add_argument("--model-dir", required=True)
    k.add_argument("--prompts", type=Path, required=True)
    k.add_argument("--budgets", default="64,128,256")
    k.add_argument("--limit", type=int, help="the first N prompts")
    k.add_argument("--out", type=Path, required=True)
    k.add_argument("--device", default="cpu")
    c = sub.add_parser("compare")
    c.add_argument("--model", required=True)
    c.add_argument("--prompts", type=Path, required=True)
    c.add_argument("--kvpress", type=Path, required=True)
    c.add_argument("--out", type=Path)
    c.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.side == "kvpress":
        kvpress_side(args)
    else:
        compare_side(args)


if __name__ == "__main__":
    main()
