"""WindowKV ``auto`` against the task categories, on both models, three sets and three protocols.

    python benchmarks/windowkv_auto.py \
        --models smollm2-135m:4096,qwen2.5-coder-0.5b:8192 --ruler-samples 5 --seeds 1,2 \
        --longbench-dir ../shared/data/longbench --multi-news 20 \
        --protocols raw,chat,agnostic --out docs/results/windowkv_auto.json

(About 25 minutes for both models on two shared CPU cores: each prefill stops after the first layer.)

The target (issue 12, item 5): ``auto`` must agree with the task categories (QA -> localization,
everything else -> aggregation) on at least 90% of RULER (13 tasks), NIAH and LongBench multi_news
samples, on both models, without training, task names, templates or an extra model.

For every sample and protocol it prefills the part of the prompt that would be compressed (with the
real ``Compressor`` and ``WindowKV(mode="auto")``), stops the forward pass as soon as ``auto`` has
decided (the decision is made at the first compressed layer, so the rest of the prefill would not
change it), and records the chosen mode. Protocols (what is compressed):

* ``raw``: the whole raw prompt, question included, no chat template (the papers' setting);
* ``chat``: the prompt as the user turn of the chat template (RULER's answer prefix moved after it);
* ``agnostic``: the context alone, cut where ``dynamickv eval --protocol agnostic`` cuts it (the end of the
  template's context: RULER's restated QA instruction goes with the question); no chat template.

It also records training-free candidate statistics of the same prefill and checks, for each, whether
*any* threshold could reach the target: the best threshold fitted on the ``dev`` split (the first seed,
the first NIAH depths, the first multi_news records) evaluated on the ``check`` split (the second
seed, other depths, other records), and leave-one-task-out (the threshold refitted without the task it
is tested on). A statistic whose fitted threshold does well in-sample but not on held-out samples or
tasks is a fit, not a rule.

* ``entropy``: what ``auto`` decides on, the normalised entropy of the localization window scores at
  the first compressed layer, sink and recent windows left out (``WindowKV.window_entropy``);
* ``far_share``: the share of the observation window's attention (16 queries, all heads, sinks left
  out) on tokens more than 256 positions before it: does the end of the prompt look far back;
* ``peak_share``: the share of the same attention held by the top 1% of 8-token windows;
* ``restated_span``: a prompt statistic (no model): the longest run of the last 12 compressed tokens
  that already occurs earlier in the prompt.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from dynamickv.compressor import Compressor
from dynamickv.eval import longbench, niah, ruler
from dynamickv.eval.base import Sample
from dynamickv.eval.runner import split_prompt
from dynamickv.methods.windowkv import AUTO_ENTROPY_THRESHOLD, WindowKV
from dynamickv.models import load_model
from dynamickv.scoring import Observation

PROTOCOLS = ("raw", "chat", "agnostic")
STATISTICS = ("entropy", "far_share", "peak_share", "restated_span")
SETS = ("ruler", "niah", "multi_news")


def expected(category: str) -> str:
    return "localization" if category == "qa" else "aggregation"


# ------------------------------------------------------------------------------------------------
# what is compressed, per protocol
# ------------------------------------------------------------------------------------------------


def compressed_ids(sample: Sample, tok: Any, protocol: str) -> torch.Tensor:
    if protocol == "chat":
        return split_prompt(sample, tok)[0]
    if protocol == "raw":
        return split_prompt(dataclasses.replace(sample, chat_template=False), tok)[0]
    # the context alone, cut where the harness's query-agnostic protocol cuts it (the end of the
    # template's context), without a chat template as in ``raw``
    return split_prompt(dataclasses.replace(sample, chat_template=False), tok, "agnostic")[0]


# ------------------------------------------------------------------------------------------------
# one decision
# ------------------------------------------------------------------------------------------------


class _Decided(Exception):
    """Raised right after ``auto`` decided: the rest of the prefill cannot change the mode."""


class _Probe(WindowKV):
    """``WindowKV(mode="auto")`` that also records the candidate statistics of its first layer."""

    def compress(self, layer: int, obs: Observation):
        ops = super().compress(layer, obs)
        if self.chosen_mode is not None:
            self.statistics = attention_statistics(self, obs)
            raise _Decided
        return ops


def attention_statistics(method: WindowKV, obs: Observation) -> dict[str, float]:
    tok = obs.scores(16, per_kv_head=False)[0].clamp_min(0).double()  # [n - 16]
    sink = 8
    body = tok[sink:]
    total = float(body.sum()) or 1.0
    far = float(body[: max(0, body.shape[0] - 256)].sum()) / total
    m = body.shape[0] // 8
    win = body[: m * 8].reshape(m, 8).sum(-1)
    top = max(1, m // 100)
    peak = float(win.topk(top).values.sum()) / total if m else 1.0
    return {"entropy": method.window_entropy(obs), "far_share": far, "peak_share": peak}


def restated_span(ids: list[int], last: int = 12) -> int:
    """Longest run of the last ``last`` tokens that also occurs (contiguously) earlier in ``ids``."""
    win, body = ids[-last:], ids[:-last]
    where: dict[int, list[int]] = defaultdict(list)
    for i, t in enumerate(body):
        where[t].append(i)
    best = 0
    for i in range(len(win)):
        for j in where.get(win[i], ()):
            k = 0
            while i + k < len(win) and j + k < len(body) and body[j + k] == win[i + k]:
                k += 1
            best = max(best, k)
    return best


@torch.inference_mode()
def decide(model: Any, ids: torch.Tensor, budget: int) -> tuple[str, dict[str, float], float]:
    probe = _Probe(mode="auto")
    t0 = time.perf_counter()
    with Compressor(model, probe, budget=budget):
        try:
            model(input_ids=ids, use_cache=True, logits_to_keep=1)
        except _Decided:
            pass
    if probe.chosen_mode is None:
        raise RuntimeError("auto never decided")
    stats = dict(probe.statistics, restated_span=restated_span(ids[0].tolist()))
    return probe.chosen_mode, stats, time.perf_counter() - t0


# ------------------------------------------------------------------------------------------------
# samples
# ------------------------------------------------------------------------------------------------


def add_sample_options(ap: argparse.ArgumentParser, ruler_samples: int, multi_news: int) -> None:
    """The options that choose the samples (:func:`build_samples`), shared with windowkv_mode_layers.py."""
    ap.add_argument("--ruler-samples", type=int, default=ruler_samples, help="per task and seed")
    ap.add_argument("--seeds", default="1,2", help="RULER seeds of the dev and check splits")
    ap.add_argument("--niah-lengths", default="1024,2048,4096,8192", help="kept when <= the model's length")
    ap.add_argument("--niah-depths", default="0,25,50,75,100")
    ap.add_argument("--niah-check-depths", default="10,40,60,90")
    ap.add_argument("--longbench-dir", default=None, help="folder holding multi_news.jsonl")
    ap.add_argument("--multi-news", type=int, default=multi_news, help="records per split")


def parse_sample_options(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Turn the comma lists of :func:`add_sample_options` into numbers, in place."""
    args.seeds = [int(x) for x in args.seeds.split(",")]
    if len(args.seeds) != 2:
        ap.error("--seeds takes two seeds: dev and check")
    args.niah_lengths = [int(x) for x in args.niah_lengths.split(",")]
    args.niah_depths = [float(x) for x in args.niah_depths.split(",")]
    args.niah_check_depths = [float(x) for x in args.niah_check_depths.split(",")]


def build_samples(tok: Any, length: int, args: argparse.Namespace) -> list[tuple[str, str, Sample]]:
    """``(set, split, sample)``: split ``dev`` (first seed, first depths, first records) or ``check``."""
    out: list[tuple[str, str, Sample]] = []
    for split, seed in zip(("dev", "check"), args.seeds):
        for task in ruler.RULER_TASKS:
            out += [
                ("ruler", split, s) for s in ruler.generate(task, tok, length, args.ruler_samples, seed=seed)
            ]
    lengths = [x for x in args.niah_lengths if x <= length] or [length]
    for split, depths in (("dev", args.niah_depths), ("check", args.niah_check_depths)):
        for s in niah.generate(tok, lengths, depths):
            out.append(("niah", split, dataclasses.replace(s, index=f"{split}-{s.index}")))
    if args.longbench_dir and args.multi_news:
        records = longbench.load_task("multi_news", args.longbench_dir)[: 2 * args.multi_news]
        samples = longbench.build_samples("multi_news", records, tok, length - 512 - 64)
        for i, s in enumerate(samples):
            out.append(("multi_news", "dev" if i < args.multi_news else "check", s))
    return out


# ------------------------------------------------------------------------------------------------
# analysis
# ------------------------------------------------------------------------------------------------


def _count(rows: list[dict], key: str = "chosen") -> dict[str, Any]:
    n = len(rows)
    agree = sum(r[key] == r["expected"] for r in rows)
    return {"agree": agree, "n": n, "rate": agree / n if n else None}


def agreement(rows: list[dict], key: str = "chosen") -> dict[str, Any]:
    by_set: dict[str, list[dict]] = defaultdict(list)
    by_task: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_set[r["set"]].append(r)
        by_task[r["task"]].append(r)
    sets = {s: _count(by_set[s], key) for s in SETS if by_set[s]}
    return {
        "sets": sets,
        "tasks": {t: _count(v, key) for t, v in by_task.items()},
        "pooled": _count(rows, key),
        "worst_set": min((v["rate"] for v in sets.values()), default=None),
    }


def _predict(value: float, threshold: float, direction: str) -> str:
    hit = value >= threshold if direction == ">=" else value <= threshold
    return "localization" if hit else "aggregation"


def fit_threshold(rows: list[dict], stat: str) -> tuple[float, str]:
    """The threshold and direction with the best worst-set agreement on ``rows`` (ties: pooled, then
    the lowest threshold, ``>=`` before ``<=``). Every distinct value is tried, in one tensor pass."""
    values = torch.tensor([float(r["stats"][stat]) for r in rows], dtype=torch.float64)
    want = torch.tensor([r["expected"] == "localization" for r in rows])
    names = list(dict.fromkeys(r["set"] for r in rows))
    onehot = torch.zeros(len(rows), len(names), dtype=torch.float64)
    onehot[torch.arange(len(rows)), torch.tensor([names.index(r["set"]) for r in rows])] = 1.0
    thresholds = torch.unique(values)  # sorted
    hits = torch.stack([values >= thresholds[:, None], values <= thresholds[:, None]], 1)  # [T, 2, n]
    right = (
        (hits == want).to(torch.float64).reshape(-1, len(rows))
    )  # candidates in (threshold, direction) order
    worst = ((right @ onehot) / onehot.sum(0)).min(-1).values
    pooled = right.sum(-1) / len(rows)
    best = worst == worst.max()
    index = int(torch.nonzero(best & (pooled == pooled[best].max()))[0])
    return float(thresholds[index // 2]), (">=", "<=")[index % 2]


def threshold_study(rows: list[dict], stat: str) -> dict[str, Any]:
    dev = [r for r in rows if r["split"] == "dev"]
    check = [r for r in rows if r["split"] == "check"]
    thr, direction = fit_threshold(dev, stat)

    def apply(rs: list[dict], t: float, d: str) -> list[dict]:
        return [dict(r, fit=_predict(r["stats"][stat], t, d)) for r in rs]

    loto = []
    for task in sorted({r["task"] for r in rows}):
        t, d = fit_threshold([r for r in rows if r["task"] != task], stat)
        loto += apply([r for r in rows if r["task"] == task], t, d)
    return {
        "dev_threshold": thr,
        "direction": direction,
        "dev": agreement(apply(dev, thr, direction), "fit"),
        "check": agreement(apply(check, thr, direction), "fit"),
        "leave_one_task_out": agreement(loto, "fit"),
    }


def _pct(c: dict | None) -> str:
    if not c or c["rate"] is None:
        return "-"
    return f"{100 * c['rate']:.1f}% ({c['agree']}/{c['n']})"


def text_report(result: dict[str, Any]) -> str:
    meta = result["meta"]
    lines = [
        "WindowKV auto vs task categories (QA -> localization, others -> aggregation)",
        f"date {meta['date']}  machine {meta['machine']}  torch {meta['torch']}  transformers {meta['transformers']}",
        f"command: {meta['command']}",
        "",
    ]
    for model, per_protocol in result["agreement"].items():
        for protocol, a in per_protocol.items():
            lines.append(f"== {model}, protocol {protocol}: auto (rule as shipped)")
            lines.append(
                "  "
                + "  ".join(f"{s} {_pct(a['sets'].get(s))}" for s in SETS)
                + f"  pooled {_pct(a['pooled'])}"
            )
            lines.append("  per task: " + ", ".join(f"{t} {_pct(c)}" for t, c in a["tasks"].items()))
            for stat, s in result["statistics"][model][protocol].items():
                lines.append(
                    f"  {stat:<13} best dev threshold {s['direction']} {s['dev_threshold']:.4g}: "
                    + "  ".join(
                        f"{part} " + "/".join(_pct(s[part]["sets"].get(x)).split(" ")[0] for x in SETS)
                        for part in ("dev", "check", "leave_one_task_out")
                    )
                )
            lines.append("")
    lines.append("statistic columns: ruler/niah/multi_news agreement of the best dev threshold on dev,")
    lines.append("on the check split (other seed, depths, records) and leave-one-task-out.")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="smollm2-135m:4096,qwen2.5-coder-0.5b:8192", help="name:length,...")
    add_sample_options(ap, ruler_samples=5, multi_news=20)
    ap.add_argument("--protocols", default=",".join(PROTOCOLS))
    ap.add_argument("--budget", type=int, default=128)
    ap.add_argument("--out", default="docs/results/windowkv_auto.json")
    args = ap.parse_args()
    command = "python benchmarks/windowkv_auto.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None
    )
    parse_sample_options(ap, args)
    protocols = [p for p in args.protocols.split(",") if p]
    if any(p not in PROTOCOLS for p in protocols):
        ap.error(f"--protocols: choose from {', '.join(PROTOCOLS)}")
    torch.set_num_threads(max(1, torch.get_num_threads()))

    rows: list[dict[str, Any]] = []
    for spec in args.models.split(","):
        name, length = spec.rsplit(":", 1)
        model, tok = load_model(name, progress=False)
        samples = build_samples(tok, int(length), args)
        print(f"{name}: {len(samples)} samples", flush=True)
        for set_name, split, s in samples:
            for protocol in protocols:
                ids = compressed_ids(s, tok, protocol)
                chosen, stats, seconds = decide(model, ids, args.budget)
                rows.append(
                    {
                        "model": name,
                        "protocol": protocol,
                        "set": set_name,
                        "split": split,
                        "task": s.task,
                        "uid": f"{s.task}/{s.index}" + (f"@{s.meta['seed']}" if "seed" in s.meta else ""),
                        "category": s.category,
                        "expected": expected(s.category),
                        "chosen": chosen,
                        "tokens": int(ids.shape[-1]),
                        "stats": stats,
                        "seconds": round(seconds, 3),
                    }
                )
                print(
                    f"{name:<20} {protocol:<8} {rows[-1]['uid']:<24} {s.category:<13} auto {chosen:<12} "
                    + " ".join(f"{k} {v:.3f}" for k, v in stats.items()),
                    flush=True,
                )
        del model

    agree: dict[str, dict[str, Any]] = defaultdict(dict)
    studies: dict[str, dict[str, Any]] = defaultdict(dict)
    for model_name in dict.fromkeys(r["model"] for r in rows):
        for protocol in protocols:
            sub = [r for r in rows if r["model"] == model_name and r["protocol"] == protocol]
            agree[model_name][protocol] = agreement(sub)
            studies[model_name][protocol] = {stat: threshold_study(sub, stat) for stat in STATISTICS}
    import transformers

    result = {
        "meta": {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.platform()}, {platform.processor() or platform.machine()}, CPU",
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "command": command,
            "rule": f"WindowKV auto: localization when window_entropy < {AUTO_ENTROPY_THRESHOLD} at the first layer",
        },
        "agreement": agree,
        "statistics": studies,
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows_json = ",\n".join("  " + json.dumps(r) for r in result.pop("rows"))
    head = json.dumps(result, indent=1)[:-2]  # one row per line keeps the file readable and small
    out.write_text(f'{head},\n "rows": [\n{rows_json}\n ]\n}}\n')
    report = text_report(result)
    out.with_suffix(".txt").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
