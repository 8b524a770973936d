"""The attention-mass study: where the observation window's attention goes, layer by layer, and what
each allocation gives the layers that hold the answer.

For every sample, one prefill (:func:`~dynamickv.replay.record_prefill` of what the protocol
compresses); then per compressed layer, from the last ``window`` queries' attention (DynamicKV's
observation window), averaged over the queries and the KV heads:

* ``sink`` / ``window`` / ``rest``: the share of attention on the first ``sink`` tokens, on the
  window itself, and on everything else (what the allocation competes for);
* ``entropy``: the normalised entropy of the *rest* (1: spread evenly, 0: one token);
* ``cover90``: tokens needed to hold 90% of the rest (median over heads);
* ``needle_mass``: the share of the rest on the needle / answer tokens (RULER niah, NIAH), and
  ``key_mass`` on the 8 tokens just before it (where a question restating the needle's key looks);
* ``needle_need``: per pooling (centred avg and max with kernel 7, forward with 12), the tokens a head must keep to keep every needle token (the worst
  needle token's rank among the layer's pooled scores, median over heads): the budget this layer
  needs for the answer to survive;

and per method, each layer's kept tokens and whether the whole needle survived in every KV head
(``needle_whole``) and in at least one (``needle_any_head``: a model copies through some heads).
Written to ``attention.jsonl`` (one line per sample); :func:`plot` draws the figures of
``docs/diagnosis.md``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from dynamickv.eval.base import Sample

RECORDS = "attention.jsonl"
#: The poolings compared, with their kernels: SnapKV's/DynamicKV's centred ones, dynamickv-robust's.
POOLINGS = {"avg": 7, "max": 7, "forward": 12}
#: Tokens just before the needle: where a question that restates the needle's key looks.
KEY_SPAN = 8


def layer_statistics(obs, window: int, sink: int, needle: list[list[int]] | None) -> dict:
    """The statistics of one layer's :class:`~dynamickv.scoring.Observation` (see the module doc)."""
    from dynamickv.scoring import pool_scores

    attn = obs.last(window).attention()[..., -window:, :]  # [b, h_kv, g, w, n]
    per_head = attn.mean(dim=(2, 3))[0]  # [h_kv, n]: batch of one
    n = per_head.shape[-1]
    s = min(sink, max(0, n - window))
    sink_mass = per_head[:, :s].sum(-1)
    window_mass = per_head[:, n - window :].sum(-1)
    rest = per_head[:, s : n - window]
    rest_mass = rest.sum(-1)
    p = rest / rest_mass.clamp_min(1e-30).unsqueeze(-1)
    m = rest.shape[-1]
    ent = -(p * p.clamp_min(1e-30).log()).sum(-1) / math.log(max(m, 2))
    srt = p.sort(dim=-1, descending=True).values.cumsum(-1)
    cover = (srt < 0.9).sum(-1) + 1
    out = {
        "sink": float(sink_mass.mean()),
        "window": float(window_mass.mean()),
        "rest": float(rest_mass.mean()),
        "entropy": float(ent.mean()),
        "cover90": float(cover.float().median()),
    }
    if needle:
        idx = torch.tensor([t for a, b in needle for t in range(a, b) if t < n - window], dtype=torch.long)
        if idx.numel():
            out["needle_mass"] = float((per_head[:, idx].sum(-1) / rest_mass.clamp_min(1e-30)).mean())
            first = int(idx.min())
            key = torch.arange(max(s, first - KEY_SPAN), first, dtype=torch.long)
            out["key_mass"] = float((per_head[:, key].sum(-1) / rest_mass.clamp_min(1e-30)).mean())
            scores = per_head[:, : n - window].unsqueeze(0)
            need = {}
            for mode, kernel in POOLINGS.items():
                pooled = pool_scores(scores, kernel, mode)[0]  # [h_kv, n - w]
                order = torch.sort(pooled, dim=-1, descending=True, stable=True).indices
                ranks = order.argsort(dim=-1)  # 0 = best; ties to the lower position, as selections do
                need[mode] = float((ranks[:, idx].max(dim=-1).values + 1).float().median())
            out["needle_need"] = need
    return out


def study_sample(
    model: Any,
    tokenizer: Any,
    sample: Sample,
    budget: int,
    methods: Sequence[str],
    protocol: str = "raw",
    window: int = 8,
    sink: int = 4,
) -> dict[str, Any]:
    """One sample's line of ``attention.jsonl``."""
    from dynamickv.analysis.retention import needle_spans, sample_uid
    from dynamickv.cache import compressed_layers
    from dynamickv.eval.prompts import split_prompt
    from dynamickv.methods import parse_method_spec
    from dynamickv.replay import derive_cache, record_prefill

    head, _ = split_prompt(sample, tokenizer, protocol)
    device = next(model.parameters()).device
    record = record_prefill(model, head.to(device), observation_queries=64)
    try:
        spans = needle_spans(sample, tokenizer, head[0].tolist())
        layers = [
            layer_statistics(record.observations[j], window, sink, spans) for j in range(len(record.layers))
        ]
        kept: dict[str, Any] = {}
        for spec in methods:
            name, params = parse_method_spec(spec)
            cache, _ = derive_cache(record, name, budget, **params)
            comp = compressed_layers(cache)
            counts, whole, some = [], [], []
            for i in record.layers:
                pos = comp[i].positions[0] if i in comp else None
                counts.append(int(pos.shape[-1]) if pos is not None else int(head.shape[-1]))
                if spans and pos is not None:
                    need = torch.tensor([t for a, b in spans for t in range(a, b)], device=pos.device)
                    per_head = (pos.unsqueeze(-1) == need).any(dim=1).all(dim=-1)  # [h_kv]
                    whole.append(bool(per_head.all()))
                    some.append(bool(per_head.any()))
            kept[spec] = {"kept": counts, "needle_whole": whole or None, "needle_any_head": some or None}
    finally:
        record.release()
    return {
        "uid": sample_uid(sample),
        "task": sample.task,
        "category": sample.category,
        "prompt_tokens": int(head.shape[-1]),
        "budget": budget,
        "protocol": protocol,
        "needle_spans": spans,
        "layers": layers,
        "methods": kept,
    }


def run_study(
    model: Any,
    tokenizer: Any,
    samples: Sequence[Sample],
    budget: int,
    methods: Sequence[str],
    out: str | Path,
    protocol: str = "raw",
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """:func:`study_sample` for every sample, appended to ``out/attention.jsonl`` (resumable)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / RECORDS
    done = {r["uid"]: r for r in load(path)}
    from dynamickv.analysis.retention import sample_uid

    with open(path, "a", encoding="utf-8") as fh:
        for i, s in enumerate(samples):
            if sample_uid(s) in done:
                continue
            with torch.inference_mode():
                row = study_sample(model, tokenizer, s, budget, methods, protocol)
            fh.write(json.dumps(row) + "\n")
            fh.flush()
            done[row["uid"]] = row
            if progress:
                progress(f"[{i + 1}/{len(samples)}] {row['uid']}")
    return [done[sample_uid(s)] for s in samples if sample_uid(s) in done]


def load(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if path.is_dir():
        path = path / RECORDS
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def _mean(rows: Sequence[Sequence[float]]) -> list[float]:
    return [sum(col) / len(col) for col in zip(*rows)] if rows else []


def summary(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per-layer means over samples (and over needle samples for the needle fields)."""
    if not records:
        return {}
    keys = ("sink", "window", "rest", "entropy", "cover90")
    out: dict[str, Any] = {k: _mean([[la[k] for la in r["layers"]] for r in records]) for k in keys}
    needles = [r for r in records if r["layers"] and "needle_need" in r["layers"][0]]
    if needles:
        out["needle_mass"] = _mean([[la.get("needle_mass", 0.0) for la in r["layers"]] for r in needles])
        out["key_mass"] = _mean([[la.get("key_mass", 0.0) for la in r["layers"]] for r in needles])
        out["needle_need"] = {
            mode: _mean([[la["needle_need"][mode] for la in r["layers"]] for r in needles])
            for mode in POOLINGS
        }
        out["needle_samples"] = len(needles)
    out["kept"] = {m: _mean([r["methods"][m]["kept"] for r in records]) for m in records[0]["methods"]}
    for key in ("needle_whole", "needle_any_head"):
        out[f"{key}_share"] = {
            m: _mean([[float(x) for x in r["methods"][m][key]] for r in needles])
            for m in records[0]["methods"]
            if needles and all(r["methods"][m].get(key) for r in needles)
        }
    out["samples"] = len(records)
    return out


def plot(records: Sequence[dict[str, Any]], out: str | Path, title: str = "") -> list[Path]:
    """``attention_mass.png`` (sink / window / rest per layer, entropy of the rest) and, with needle
    samples, ``needle_budget.png`` (tokens a layer needs to keep the whole needle vs. what each method
    gives it, and the share of samples where each method kept the whole needle in at least one head)
    and ``needle_key_mass.png`` (the attention on the needle and on the tokens just before it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    s = summary(records)
    if not s:
        return []
    paths = []
    layers = list(range(len(s["sink"])))
    fig, ax = plt.subplots(figsize=(9, 4))
    bottom = [0.0] * len(layers)
    for key, color in (("sink", "#444444"), ("window", "#e69f00"), ("rest", "#56b4e9")):
        ax.bar(layers, s[key], bottom=bottom, color=color, label=f"{key} mass")
        bottom = [b + v for b, v in zip(bottom, s[key])]
    ax2 = ax.twinx()
    ax2.plot(layers, s["entropy"], "k.-", label="entropy of the rest (right)")
    ax2.set_ylim(0, 1.05)
    ax.set_xlabel("layer")
    ax.set_ylabel("share of the observation window's attention")
    ax.set_title(f"{title} ({s['samples']} samples)".strip())
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper left", fontsize=8)
    fig.tight_layout()
    path = out / "attention_mass.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)
    if "needle_need" in s:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 5.5))
        for (mode, kernel), style in zip(POOLINGS.items(), ("--", ":", "-.")):
            a1.plot(layers, s["needle_need"][mode], "k" + style, label=f"needed, {mode} pooling (k={kernel})")
        for m, kept in s["kept"].items():
            a1.plot(layers, kept, label=f"kept: {m}")
        a1.set_yscale("log")
        a1.set_xlabel("layer")
        a1.set_ylabel("tokens per KV head")
        a1.set_title(f"tokens to keep the whole needle vs. kept ({s['needle_samples']} needle samples)")
        a1.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
        for m, share in s["needle_any_head_share"].items():
            a2.plot(layers, share, ".-", label=m)
        a2.set_ylim(-0.02, 1.02)
        a2.set_xlabel("layer")
        a2.set_ylabel("share of needle samples")
        a2.set_title("whole needle kept by at least one KV head")
        a2.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
        fig.suptitle(title)
        fig.tight_layout()
        path = out / "needle_budget.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
        fig, ax = plt.subplots(figsize=(9, 3.6))
        ax.plot(layers, s["key_mass"], "o-", label=f"the {KEY_SPAN} tokens before the needle (its key)")
        ax.plot(layers, s["needle_mass"], "s-", label="the needle (the answer's tokens)")
        ax.set_xlabel("layer")
        ax.set_ylabel("share of the non-sink, non-window mass")
        ax.set_title(f"{title}: where the question looks ({s['needle_samples']} needle samples)".strip(": "))
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / "needle_key_mass.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
