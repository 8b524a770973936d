"""Which of the needle's tokens does each method keep, layer by layer?

    python benchmarks/needle_tokens.py --model smollm2-135m --task niah_single_1 --length 4096 \
        --samples 10 --budgets 128,256,512 --out docs/results/needle_tokens.json

RULER's niah answers are 7-digit numbers, and small Llama-style tokenizers split them into one token
per digit. A model copies such a number digit by digit: while writing digit ``k`` it attends to the
context token holding digit ``k``. A method that keeps only the *first* digits (the ones the question's
observation window attends to most, plus pooling neighbours) lets the model start the number right and
then lose it. This script measures that directly from the caches: for each method and budget, the
share of needle tokens kept (mean over layers and KV heads), the share of layers keeping the whole
needle in every head, and the mean number of leading needle tokens kept in every layer and head.
If ``--predictions`` points at an eval run's predictions.jsonl, the answers are joined on; ``--decode``
answers and scores every configuration here instead, which also works for method variants written
``name:param=value;param=value`` (e.g. ``dynamickv:window=32``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from provenance import provenance

from dynamickv.analysis.retention import needle_spans
from dynamickv.cache import compressed_layers
from dynamickv.eval import ruler
from dynamickv.eval.runner import _decode, get_scorer, method_params, sample_uid, split_prompt
from dynamickv.methods import parse_method_spec
from dynamickv.models import load_model
from dynamickv.replay import derive_cache, record_prefill

METHODS = ("streamingllm", "h2o", "snapkv", "pyramidkv", "dynamickv", "windowkv")


def needle_stats(cache, span: list[int]) -> dict[str, float]:
    """Retention of the token span ``[start, end)`` across the cache's compressed layers."""
    start, end = span
    needle = torch.arange(start, end)
    shares, whole, leading = [], [], []
    for layer in compressed_layers(cache).values():
        pos = layer.positions[0]  # [kv_heads, kept]
        kept = (pos.unsqueeze(-1) == needle).any(dim=1)  # [kv_heads, needle]
        shares.append(kept.float().mean().item())
        whole.append(bool(kept.all()))
        all_heads = kept.all(dim=0).tolist()
        lead = next((i for i, k in enumerate(all_heads) if not k), len(all_heads))
        leading.append(lead)
    n = len(shares)
    return {
        "needle_tokens": end - start,
        "per_layer": [round(x, 3) for x in shares],
        "kept_share": sum(shares) / n,
        "layers_whole": sum(whole) / n,
        "leading_kept": sum(leading) / n,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--task", default="niah_single_1")
    ap.add_argument("--length", type=int, default=4096)
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--seed", type=int, default=42, help="RULER seed (as `dynamickv eval --seed`)")
    ap.add_argument("--budgets", default="128,256,512")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--predictions", default=None, help="an eval run's predictions.jsonl to join")
    ap.add_argument("--decode", action="store_true", help="answer and score every configuration here")
    ap.add_argument("--out", default="docs/results/needle_tokens.json")
    args = ap.parse_args()

    model, tok = load_model(args.model)
    samples = ruler.generate(args.task, tok, args.length, args.samples, seed=args.seed)
    for s in samples:  # the ids `dynamickv eval ruler` writes
        s.meta["uid"] = f"{args.task}/{args.length}/{s.index}"
    budgets = [int(b) for b in args.budgets.split(",")]
    methods = args.methods.split(",")
    scorer = get_scorer("ruler")
    if args.decode:
        from dynamickv.pipeline import CompressedContext, Pipeline

        pipe = Pipeline(model, tok, "fullkv", budget=1)
    answers: dict[tuple[str, str, int], float] = {}
    if args.predictions:
        for line in open(args.predictions, encoding="utf-8"):
            r = json.loads(line)
            answers[(r["uid"], r["method"], r["budget"])] = r["score"]

    rows: list[dict] = []
    for sample in samples:
        head_ids, tail_ids = split_prompt(sample, tok)
        spans = needle_spans(sample, tok, head_ids[0].tolist())
        if not spans:
            continue
        record = record_prefill(model, head_ids)
        for method in methods:
            for b in budgets:
                name, params = parse_method_spec(method)
                params = {**method_params(name, sample, "category"), **params}
                cache, stats = derive_cache(record, name, b, **params)
                row = {
                    "uid": sample_uid(sample),
                    "method": method,
                    "budget": b,
                    **needle_stats(cache, spans[0]),
                }
                score = answers.get((row["uid"], method, b))
                if args.decode:
                    ctx = CompressedContext(cache, head_ids, stats, record.seconds)
                    row["prediction"] = _decode(pipe, ctx, tail_ids, sample, sample.max_new_tokens)
                    score = scorer.sample(sample, row["prediction"])
                if score is not None:
                    row["score"] = score
                rows.append(row)
        record.release()
        print(f"{sample_uid(sample)}: {head_ids.shape[-1]} tokens, needle span {spans[0]}", flush=True)

    table = []
    print(f"\n{'method':<13}{'B':>5}{'kept share':>12}{'whole layers':>14}{'leading kept':>14}{'score':>8}")
    for method in methods:
        for b in budgets:
            sel = [r for r in rows if r["method"] == method and r["budget"] == b]
            mean = {
                k: sum(r[k] for r in sel) / len(sel) for k in ("kept_share", "layers_whole", "leading_kept")
            }
            scores = [r["score"] for r in sel if "score" in r]
            mean["score"] = sum(scores) / len(scores) if scores else None
            mean["needle_tokens"] = sum(r["needle_tokens"] for r in sel) / len(sel)
            layers = len(sel[0]["per_layer"])
            mean["per_layer"] = [
                round(sum(r["per_layer"][i] for r in sel) / len(sel), 3) for i in range(layers)
            ]
            table.append({"method": method, "budget": b, **mean})
            s = "-" if mean["score"] is None else f"{mean['score']:.0f}"
            print(
                f"{method:<13}{b:>5}{mean['kept_share']:>12.2f}{mean['layers_whole']:>14.2f}"
                f"{mean['leading_kept']:>14.2f}{s:>8}"
            )
    print(
        "\nneedle tokens kept per layer (share, mean over samples and KV heads), one digit per layer (0-9):"
    )
    for row in table:
        digits = "".join(str(min(9, int(x * 10))) for x in row["per_layer"])
        print(f"{row['method']:<13}{row['budget']:>5}  {digits}")
    result = {
        **provenance("needle_tokens.py", args),
        "table": table,
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
