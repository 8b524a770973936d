"""WindowKV ``auto`` from the context's own words (issue 12, item 5): a fifth, model-free signal.

The earlier studies read the model: attention at the first compressed layer (``windowkv_auto.py``)
and at every layer (``windowkv_mode_layers.py``), its reading of the request (``windowkv_selfask.py``)
and its surprisal (``windowkv_surprisal.py``). Their rules that pass 90% are fitted to one model and
do not carry over to another. A statistic of the token ids alone needs no model, so one threshold
would serve every model: the one property those rules lacked.

The hypothesis: QA contexts are piles of short unrelated documents (RULER's SQuAD and HotpotQA
paragraphs), while what the categories call aggregation reads one coherent text (an essay haystack,
related news articles) or a synthetic list. So QA contexts should bring new words faster, share fewer
words between neighbouring chunks, and repeat their rare words close by, inside one document.

Per sample (the raw prompt, the papers' protocol), on the *body* (without the first 8 tokens and the
last 256, the request), in token ids:

* ``novelty``: the share of a 128-token chunk's distinct tokens not seen in earlier chunks, averaged
  over the last three quarters of the chunks;
* ``early_novelty``: the share of the distinct tokens of body tokens 256-511 not among tokens 0-255
  (the same span of every prompt, so it does not fall with the prompt's length as ``novelty`` does);
* ``chunk_jaccard``: the mean Jaccard overlap of neighbouring chunks' token sets;
* ``heaps``: the slope of log(distinct tokens) against log(tokens) (Heaps' law; fast vocabulary
  growth means many topics);
* ``recur_near``: of the tokens that occur 2-4 times, the share of repeats within 256 tokens of
  the previous occurrence;
* ``recur_log_median``: log10 of those repeats' median distance.

A scratch probe of ``novelty``, ``chunk_jaccard`` and ``heaps`` (2026-11-30), then of the others
(2026-12-01, ``early_novelty`` after ``novelty`` was seen to fall with length) on the same prompts
came first; this script makes their result reproducible. Each statistic gets one
threshold for both models, fitted on their pooled ``dev`` split, then checked on each model's
``check`` split and leave-one-task-out (refitted without the task). A fitted threshold is an upper
bound on the signal, not a training-free rule. Reads the prompts ``windowkv_mode_layers.py
--save-prompts`` wrote::

    python benchmarks/windowkv_lexical.py --prompts .dev/wprompts --models smollm2-135m,qwen2.5-coder-0.5b \
        --out docs/results/windowkv_lexical.json
"""

from __future__ import annotations

import argparse
import math
import statistics as st
import sys
from collections import Counter
from itertools import pairwise
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import provenance, write_result
from windowkv_auto import SETS, _pct, _predict, agreement, fit_threshold

SINKS, RECENT, CHUNK, NEAR = 8, 256, 128, 256
STATISTICS = ("novelty", "early_novelty", "chunk_jaccard", "heaps", "recur_near", "recur_log_median")


def statistics(ids: list[int]) -> dict[str, float]:
    """The module docstring's statistics of one prompt's token ids."""
    body = ids[SINKS : len(ids) - RECENT]
    chunks = [set(body[a : a + CHUNK]) for a in range(0, len(body), CHUNK)]
    seen: set[int] = set()
    novelty = []
    for c in chunks:
        novelty.append(len(c - seen) / max(len(c), 1))
        seen |= c
    jaccard = [len(a & b) / len(a | b) for a, b in pairwise(chunks)]
    xs, ys, types = [], [], set()
    for i, t in enumerate(body, 1):
        types.add(t)
        if i % CHUNK == 0:
            xs.append(math.log(i))
            ys.append(math.log(len(types)))
    mx, my = st.mean(xs), st.mean(ys)
    heaps = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    count, last, gaps = Counter(body), {}, []
    for i, t in enumerate(body):
        if 2 <= count[t] <= 4 and t in last:
            gaps.append(i - last[t])
        last[t] = i
    early = set(body[256:512])
    return {
        "novelty": st.mean(novelty[len(novelty) // 4 :]),
        "early_novelty": len(early - set(body[:256])) / max(len(early), 1),
        "chunk_jaccard": st.mean(jaccard),
        "heaps": heaps,
        "recur_near": sum(g <= NEAR for g in gaps) / len(gaps) if gaps else 0.0,
        "recur_log_median": math.log10(st.median(gaps)) if gaps else 0.0,
    }


def shared_study(rows: list[dict], stat: str) -> dict[str, Any]:
    """One threshold for every model (fitted on the pooled dev rows); per model, its check-split and
    leave-one-task-out agreement per set."""

    def apply(rs: list[dict], t: float, d: str) -> list[dict]:
        return [dict(r, fit=_predict(r["stats"][stat], t, d)) for r in rs]

    thr, direction = fit_threshold([r for r in rows if r["split"] == "dev"], stat)
    loto = []
    for task in sorted({r["task"] for r in rows}):
        t, d = fit_threshold([r for r in rows if r["task"] != task], stat)
        loto += apply([r for r in rows if r["task"] == task], t, d)
    per_model = {}
    for model in sorted({r["model"] for r in rows}):
        check = [r for r in rows if r["model"] == model and r["split"] == "check"]
        per_model[model] = {
            "check": agreement(apply(check, thr, direction), "fit"),
            "leave_one_task_out": agreement([r for r in loto if r["model"] == model], "fit"),
        }
    return {"threshold": thr, "direction": direction, "models": per_model}


def ranges(rows: list[dict], stat: str) -> dict[str, list[float]]:
    """Each task's range of ``stat``, per model: where the categories overlap."""
    out: dict[str, list[float]] = {}
    for r in rows:
        lo, hi = out.get(f"{r['model']} {r['task']}", [math.inf, -math.inf])
        out[f"{r['model']} {r['task']}"] = [min(lo, r["stats"][stat]), max(hi, r["stats"][stat])]
    return out


def report(rows: list[dict], studies: dict[str, Any], command: str) -> str:
    lines = [
        "# WindowKV auto from the context's token ids (raw prompt); RULER / NIAH / multi_news agreement",
        f"# {command}",
        "# one threshold per statistic for both models, fitted on their pooled dev split; answering",
        "# aggregation for every sample scores 84.6 / 100 / 100",
        "",
    ]
    for stat in STATISTICS:
        s = studies[stat]
        lines.append(f"{stat} {s['direction']} {s['threshold']:.4g}")
        for model, parts in s["models"].items():
            cells = "  ".join(
                f"{part} " + " / ".join(_pct(parts[part]["sets"].get(x)) for x in SETS)
                for part in ("check", "leave_one_task_out")
            )
            lines.append(f"  {model:20s} {cells}")
        qa = [r["stats"][stat] for r in rows if r["expected"] == "localization"]
        inside = sum(min(qa) <= r["stats"][stat] <= max(qa) for r in rows if r["expected"] == "aggregation")
        others = sum(r["expected"] == "aggregation" for r in rows)
        lines.append(f"  QA range {min(qa):.3f}..{max(qa):.3f} holds {inside}/{others} other prompts")
    lines += ["", "# per task: min..max of each statistic"]
    tasks = list(dict.fromkeys(f"{r['model']} {r['task']}" for r in rows))
    lines.append(f"{'':34s}" + "".join(f"{s:>20s}" for s in STATISTICS))
    spans = {s: ranges(rows, s) for s in STATISTICS}
    for t in tasks:
        lines.append(
            f"{t:34s}" + "".join(f"{spans[s][t][0]:>10.3f}..{spans[s][t][1]:<8.3f}" for s in STATISTICS)
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", required=True, help="folder of windowkv_mode_layers.py --save-prompts")
    ap.add_argument("--models", default="smollm2-135m,qwen2.5-coder-0.5b")
    ap.add_argument("--out", required=True, help="JSON of per-sample statistics; the report goes beside it")
    args = ap.parse_args(argv)
    rows = []
    for name in [m for m in args.models.split(",") if m]:
        source = Path(args.prompts) / f"{name}.pt"
        if not source.is_file():
            ap.error(
                f"no saved prompts for {name}: {source} is missing (windowkv_mode_layers.py --save-prompts)"
            )
        for p in torch.load(source)["prompts"]:
            row = {k: p[k] for k in ("set", "split", "task", "uid", "expected")}
            rows.append(row | {"model": name, "stats": statistics(p["ids"]["raw"].reshape(-1).tolist())})
    studies = {stat: shared_study(rows, stat) for stat in STATISTICS}
    meta = provenance("windowkv_lexical.py", args)
    text = report(rows, studies, meta["command"])
    write_result(Path(args.out), meta | {"studies": studies, "rows": rows}, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
