"""WindowKV ``auto`` from the model's own surprisal (issue 12, item 5): a fourth training-free signal.

The earlier studies measured attention at the first compressed layer (``windowkv_auto.py``), attention
at every layer (``windowkv_mode_layers.py``) and the model's reading of the request
(``windowkv_selfask.py``). None separates the categories without a threshold fitted on the labels.
One signal of the same prefill was left: how *surprised* the model is by the context, token by token
(``-log p(x_t | x_<t)``, from the prefill's own logits; no extra model, no task names, no templates).

The hypothesis, written before any result was seen: what the categories call aggregation on RULER and
NIAH is *synthetic* content (random numbers, keys, word lists, a needle that does not belong to the
essay around it), while QA asks about natural passages. If so, the tokens the request attends to
should be more surprising, relative to the rest of the context, in needle prompts than in QA prompts,
and multi-passage QA contexts should show more passage starts (surprisal onsets) than one essay.

Per sample (the raw prompt, the papers' protocol) the *body* is the prompt without its first 8 tokens
(sinks) and its last 256 (the request); ``a`` is the attention of the last 16 queries, normalised per
layer, averaged over the KV heads and the layers. Statistics:

* ``evidence_z``: mean surprisal of the 16 body tokens with the most attention, as a z-score against
  the body's surprisal;
* ``evidence_w``: the attention-weighted body surprisal minus the body's mean, over its deviation;
* ``body_mean``: the body's mean surprisal (is the context natural text, repetitive filler or random);
* ``onsets_per_1k``: surprisal onsets per 1,000 body tokens (an 8-token window whose mean exceeds the
  body's mean by one deviation, at least 64 tokens after the last onset).

Each is scored as ``windowkv_auto.py`` scores its statistics: the threshold fitted on the ``dev``
split, checked on the ``check`` split and leave-one-task-out. A fitted threshold is an upper bound on
this signal, not a training-free rule. Reads the prompts ``windowkv_mode_layers.py --save-prompts``
wrote::

    python benchmarks/windowkv_surprisal.py --prompts .dev/wprompts --models smollm2-135m \
        --out docs/results/windowkv_surprisal.json
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
from provenance import provenance, write_result
from windowkv_auto import SETS, _pct, agreement, threshold_study

from dynamickv.eval.outdir import read_jsonl
from dynamickv.replay import record_prefill

SINKS, RECENT, QUERIES, EVIDENCE = 8, 256, 16, 16
STATISTICS = ("evidence_z", "evidence_w", "body_mean", "onsets_per_1k")


def token_surprisal(model: Any, hidden: torch.Tensor, ids: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """``-log p(x_t | x_<t)`` for every token of ``ids`` (0 for the first), from the final hidden
    states ``hidden`` ``[n, d]``, in chunks so the ``[n, vocab]`` logits never exist at once."""
    out = [torch.zeros(1)]
    for a in range(0, ids.shape[0] - 1, chunk):
        b = min(a + chunk, ids.shape[0] - 1)
        logp = model.lm_head(hidden[a:b]).float().log_softmax(-1)
        out.append(-logp.gather(-1, ids[a + 1 : b + 1, None])[:, 0].cpu())
    return torch.cat(out)


def onsets(body: torch.Tensor, window: int = 8, gap: int = 64) -> int:
    """Surprisal onsets: window means above ``mean + std``, each ``gap`` tokens after the last."""
    means = torch.nn.functional.avg_pool1d(body[None, None], window, 1)[0, 0]
    count, last = 0, -gap
    for i in (means > body.mean() + body.std()).nonzero()[:, 0].tolist():
        if i - last >= gap:
            count, last = count + 1, i
    return count


def statistics(surprisal: torch.Tensor, attention: torch.Tensor) -> dict[str, float]:
    """The module docstring's statistics from per-token ``surprisal`` ``[n]`` and the observation
    attention ``attention`` ``[layers, n]`` (each layer's row sums to one)."""
    n = min(surprisal.shape[0], attention.shape[-1])
    body = surprisal[SINKS : n - RECENT]
    a = attention[:, SINKS : n - RECENT].mean(0)
    a = a / a.sum().clamp_min(1e-12)
    mean, std = body.mean(), body.std().clamp_min(1e-6)
    top = a.topk(min(EVIDENCE, a.shape[0])).indices
    return {
        "evidence_z": float((body[top].mean() - mean) / std),
        "evidence_w": float(((a * body).sum() - mean) / std),
        "body_mean": float(mean),
        "onsets_per_1k": 1000.0 * onsets(body) / body.shape[0],
    }


@torch.inference_mode()
def measure(model: Any, ids: torch.Tensor) -> dict[str, float]:
    """One uncompressed prefill of ``ids`` ``[n]``: its :func:`statistics`."""
    captured: dict[str, torch.Tensor] = {}
    hook = model.model.norm.register_forward_hook(lambda _m, _i, out: captured.__setitem__("h", out))
    try:
        rec = record_prefill(model, ids[None].to(model.device), observation_queries=QUERIES)
    finally:
        hook.remove()
    try:
        surprisal = token_surprisal(model, captured["h"][0], ids.to(model.device))
        rows = [rec.observations[layer].scores(QUERIES, per_kv_head=True)[0].float() for layer in rec.layers]
    finally:
        rec.release()
    width = min(r.shape[-1] for r in rows)
    att = torch.stack([r[:, :width].mean(0) for r in rows]).cpu()
    return statistics(surprisal, att / att.sum(-1, keepdim=True).clamp_min(1e-12))


def report(rows: list[dict], command: str) -> str:
    lines = [
        "# WindowKV auto from the model's surprisal (raw prompt); RULER / NIAH / multi_news agreement",
        f"# {command}",
        "# answering aggregation for every sample scores 84.6 / 100 / 100; thresholds are fitted on dev",
        "",
    ]
    for model in sorted({r["model"] for r in rows}):
        mine = [r for r in rows if r["model"] == model]
        lines.append(f"{model}: {len(mine)} samples")
        for stat in STATISTICS:
            study = threshold_study(mine, stat)
            cells = "  ".join(
                f"{part} " + "/".join(_pct(study[part]["sets"].get(s)) for s in SETS)
                for part in ("dev", "check", "leave_one_task_out")
            )
            qa = sorted(r["stats"][stat] for r in mine if r["expected"] == "localization")
            other = sorted(r["stats"][stat] for r in mine if r["expected"] == "aggregation")
            inside = sum(qa[0] <= v <= qa[-1] for v in other)
            lines.append(
                f"  {stat:14s} {study['direction']} {study['dev_threshold']:.3g}: {cells}"
                f"  | QA range {qa[0]:.2f}..{qa[-1]:.2f} holds {inside}/{len(other)} others"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", required=True, help="folder of windowkv_mode_layers.py --save-prompts")
    ap.add_argument("--models", default="smollm2-135m")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    ap.add_argument("--out", required=True, help="JSON of per-sample statistics; the report goes beside it")
    args = ap.parse_args(argv)
    from dynamickv.models import load_model

    out = Path(args.out)
    partial = out.with_suffix(".partial.jsonl")  # resume: one line per finished sample
    done = [record for _, record in read_jsonl(partial)]  # a half-written last line is cut off
    seen = {(r["model"], r["uid"]) for r in done}
    for name in [m for m in args.models.split(",") if m]:
        source = Path(args.prompts) / f"{name}.pt"
        if not source.is_file():
            ap.error(
                f"no saved prompts for {name}: {source} is missing (windowkv_mode_layers.py --save-prompts)"
            )
        prompts = [p for p in torch.load(source)["prompts"] if (name, p["uid"]) not in seen]
        if not prompts:
            continue
        model, _ = load_model(name, device=args.device, dtype=getattr(torch, args.dtype), progress=False)
        t0 = time.perf_counter()
        with partial.open("a") as f:
            for i, p in enumerate(prompts, 1):
                row = {k: p[k] for k in ("set", "split", "task", "uid", "expected")}
                row |= {"model": name, "stats": measure(model, p["ids"]["raw"].reshape(-1).long())}
                f.write(json.dumps(row) + "\n")
                f.flush()
                done.append(row)
                print(f"{name} {i}/{len(prompts)} {p['uid']} {time.perf_counter() - t0:.0f} s", flush=True)
        del model
    meta = provenance("windowkv_surprisal.py", args, args.device)
    text = report(done, meta["command"])
    pooled = {
        m: agreement([r | {"chosen": "aggregation"} for r in done if r["model"] == m])
        for m in {r["model"] for r in done}
    }
    write_result(out, meta | {"all_aggregation": pooled, "rows": done}, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
