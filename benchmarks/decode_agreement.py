"""Do the fast decode modes give the plain path's greedy tokens on a *real* model?

Why: ``benchmarks/h200_serving.py`` times the decode modes on a random-weight Llama-3.1-8B-shape
model. Its logits are nearly flat, so bf16 rounding in a differently shaped kernel flips a greedy
token within a few steps and "tokens agree with plain" there says little about correctness. A real
model's logits are peaked; if a mode's tokens equal the plain path's on every prompt here, its
kernels compute the same step. Same family as the timed model (SmolLM2 is a Llama), same dtype.

For each prompt (a needle haystack of ``--lengths`` tokens, raw: context and question, no chat
template), one compressed prefill, then ``--new`` greedy tokens in each mode from that cache (no
EOS stop), compared with the first mode's (``plain``) and with a float32 reference: the same model
in float32 decoding the same (bf16) cache in ``plain`` mode. Two bf16 kernels that round differently
part ways at near-ties; the reference says whether a mode parts from the exact decode more often
than ``plain`` itself does. Writes ``agreement.json`` (rows and a
per-mode summary) under ``--out`` and prints a table; ``python -m dynamickv.bench_tables
serving.json agreement.json`` then counts a mode whose tokens equal plain's on every prompt as
checked for the x-floor target.

    python benchmarks/decode_agreement.py --model smollm2-135m --device cuda --out $OUT
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from dynamickv import bench_tables  # noqa: E402
from dynamickv.bench_profile import agreement, decode_variants, forced_agreement, forced_logits  # noqa: E402
from dynamickv.bench_serving import decoder_rate, prefill, release  # noqa: E402
from dynamickv.models import load_model  # noqa: E402
from dynamickv.report import needle_prompt  # noqa: E402

MODES = "plain,functional,fused,compiled,fused:matmul,compiled:matmul,compiled:flex"


def summarize(rows: list[dict]) -> dict[str, dict]:
    """Per mode: prompts whose tokens all equal plain's, and the agreeing prefix in total."""
    out: dict[str, dict] = {}
    plain_picks = {
        (r["tokens"], r["depth"]): r["forced_picks"]
        for r in rows
        if r["mode"] == "plain" and "forced_picks" in r
    }
    for r in rows:
        s = out.setdefault(r["mode"], {"prompts": 0, "identical": 0, "tokens_agree": 0, "tokens_compared": 0})
        if "error" in r:
            s["error"] = r["error"]
            continue
        s["prompts"] += 1
        s["identical"] += r["tokens_agree"] == r["tokens_compared"]
        s["tokens_agree"] += r["tokens_agree"]
        s["tokens_compared"] += r["tokens_compared"]
        if "reference_agree" in r:
            s["reference_identical"] = s.get("reference_identical", 0) + (
                r["reference_agree"] == r["tokens_compared"]
            )
            s["reference_agree"] = s.get("reference_agree", 0) + r["reference_agree"]
        if "forced_top1" in r:
            for k in ("forced_top1", "forced_steps"):
                s[k] = s.get(k, 0) + r[k]
            s["forced_err_sum"] = s.get("forced_err_sum", 0.0) + r["forced_err"]
            s["forced_miss_margin_max"] = max(
                s.get("forced_miss_margin_max", 0.0), r["forced_miss_margin_max"]
            )
            # paired with plain on the same prompt and step: where exactly one of the two picks
            mine, plain = r["forced_picks"], plain_picks[(r["tokens"], r["depth"])]
            s["forced_only_plain"] = s.get("forced_only_plain", 0) + sum(
                p and not m for m, p in zip(mine, plain)
            )
            s["forced_only_mode"] = s.get("forced_only_mode", 0) + sum(
                m and not p for m, p in zip(mine, plain)
            )
    for s in out.values():
        if "forced_err_sum" in s:
            s["forced_err"] = s.pop("forced_err_sum") / s["prompts"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--method", default="dynamickv")
    ap.add_argument("--budget", type=int, default=128)
    ap.add_argument("--lengths", default="1000,2000,3000,4000,6000,7000")
    ap.add_argument("--depths", default="0.25,0.75")
    ap.add_argument("--new", type=int, default=64, help="greedy tokens compared per prompt")
    ap.add_argument("--modes", default=MODES)
    ap.add_argument("--reference", default="float32", help="dtype of the reference decode ('' for none)")
    ap.add_argument("--out", default=".")
    args = ap.parse_args()
    t0 = time.perf_counter()
    model, tok = load_model(args.model, dtype=getattr(torch, args.dtype), device=args.device, progress=False)
    ref_model = None
    if args.reference:
        ref_model, _ = load_model(
            args.model, dtype=getattr(torch, args.reference), device=args.device, progress=False
        )
    modes = args.modes.split(",")
    rows = []
    for n in map(int, args.lengths.split(",")):
        for depth in map(float, args.depths.split(",")):
            context, question, _ = needle_prompt(tok, n, depth=depth, seed=n)
            ids = tok(context + "\n" + question, return_tensors="pt").input_ids.to(args.device)
            req = prefill(model, args.method, args.budget, ids)
            reference = fed = ref_logits = None
            if ref_model is not None:
                reference = decoder_rate(ref_model, [req], 1, args.new - 2, mode="plain")["tokens"]
                fed = reference[0, 1:]  # step i is fed the reference's token i + 1
                ref_logits = forced_logits(ref_model, req, "plain", fed)
            for r in decode_variants(model, req, modes, args.new - 2, keep_tokens=True):
                row = {"model": args.model, "tokens": ids.shape[1], "depth": depth, "mode": r["mode"]}
                row.update({k: r[k] for k in ("tokens_agree", "tokens_compared", "error") if k in r})
                if reference is not None and "tokens" in r:
                    row["reference_agree"] = agreement(r["tokens"], reference)
                    row.update(forced_agreement(forced_logits(model, req, r["mode"], fed), ref_logits, fed))
                rows.append(row)
            del req
            release(args.device)
    summary = summarize(rows)
    result = {
        "agreement_meta": {
            "model": args.model,
            "dtype": args.dtype,
            "method": args.method,
            "budget": args.budget,
            "reference": args.reference or None,
            "device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
            "torch": torch.__version__,
            "transformers": __import__("transformers").__version__,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seconds": round(time.perf_counter() - t0, 1),
            "command": " ".join(sys.argv),
        },
        "agreement": rows,
        "agreement_summary": summary,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "agreement.json").write_text(json.dumps(result, indent=1))
    print(bench_tables.agreement_table(result))


if __name__ == "__main__":
    main()
