"""Record a method's per-layer (and per-KV-head) retention for a set of samples, and score its task
dependence. DynamicKV by default; any method spec (``adakv``, ``pyramidkv:heads=adaptive``) works.

One :func:`~dynamickv.replay.record_prefill` per sample (the compressed head of the chat-formatted
prompt, as :func:`~dynamickv.eval.runner.split_prompt` splits it), then
``derive_cache(record, "dynamickv", budget)``: the counts stored are read from the compressed cache
itself (``CompressedLayer.positions``), so they are what DynamicKV really kept.

One JSON line per sample in ``retention.jsonl``:

``uid, task, category, method, prompt_tokens, budget, layers`` (compressed model layer indices),
``kept_per_layer`` (tokens kept per layer, per KV head), ``kept_per_head`` (``[layer][head]``),
``layer_budgets`` (DynamicKV's final per-layer budgets), ``positions`` (``[layer]``: the sorted prompt
positions KV head 0 kept), ``heads_differ`` (``[layer]``: how many KV heads kept a different set of
positions than head 0), ``needle_spans`` (``[[start, end), ...]`` token spans of the needle / answer
in the compressed prompt, when known) and ``seconds`` (prefill + selection).

DynamicKV in this library allocates per *layer*: every KV head of a layer keeps the same number of
tokens (each head picks its own tokens). Head-adaptive methods (``adakv``, ``heads=adaptive``) give
each KV head its own count: ``kept_per_head`` records what each head really holds (the cache's own
counts), and ``plots.head_retention`` draws it as a layer x head heatmap.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dynamickv.errors import InputError
from dynamickv.eval.base import Sample

RECORDS = "retention.jsonl"
SUMMARY = "summary.json"
PERMUTATIONS = 200
SEED = 0


def sample_uid(sample: Sample) -> str:
    return str(sample.meta.get("uid") or sample.uid)


# -- needle location --------------------------------------------------------------------------
def _needle_strings(sample: Sample) -> list[str]:
    """The strings whose token positions mark the needle: NIAH's needle, RULER niah's answers."""
    if sample.meta.get("needle"):
        return [str(sample.meta["needle"]).strip()]
    if sample.task.startswith("niah"):
        return [str(a) for a in sample.answers if str(a).strip()]
    return []


def needle_spans(sample: Sample, tokenizer: Any, head_ids: Sequence[int]) -> list[list[int]] | None:
    """Token spans ``[start, end)`` in ``head_ids`` of the needle (first occurrence of each needle string).

    The head is decoded and re-tokenized with offsets; ``None`` when the sample has no needle, the
    tokenizer has no offsets, or the round trip does not give the same ids."""
    strings = _needle_strings(sample)
    if not strings:
        return None
    ids = [int(i) for i in head_ids]
    try:
        text = tokenizer.decode(ids, clean_up_tokenization_spaces=False)
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except (NotImplementedError, TypeError, ValueError):
        return None
    if list(enc["input_ids"]) != ids:
        return None
    offsets = enc["offset_mapping"]
    spans = []
    for needle in strings:
        at = text.find(needle)
        if at < 0:
            continue
        end = at + len(needle)
        toks = [i for i, (s, e) in enumerate(offsets) if s < end and e > at]
        if toks:
            spans.append([toks[0], toks[-1] + 1])
    return spans or None


# -- recording --------------------------------------------------------------------------------
def record_sample(
    model: Any,
    tokenizer: Any,
    sample: Sample,
    budget: int | float | str,
    method: str = "dynamickv",
    protocol: str = "chat",
    **params: Any,
) -> dict[str, Any]:
    """``method``'s retention on one sample (DynamicKV by default; see the module docstring); the
    compressed part is what ``protocol`` compresses (:data:`dynamickv.eval.prompts.PROTOCOLS`)."""
    from dynamickv.cache import compressed_layers
    from dynamickv.eval.runner import split_prompt
    from dynamickv.replay import derive_cache, record_prefill

    head_ids, _ = split_prompt(sample, tokenizer, protocol)
    t0 = time.perf_counter()
    record = record_prefill(model, head_ids)
    try:
        cache, stats = derive_cache(record, method, budget, **params)
    finally:
        record.release()
    seconds = time.perf_counter() - t0
    layers = compressed_layers(cache)
    order = sorted(layers)
    kept_per_head, positions, heads_differ = [], [], []
    for idx in order:
        kept_per_head.append([int(c) for c in layers[idx].kept_counts()[0].tolist()])  # batch of one
        heads = layers[idx].kept_positions(0)
        positions.append(heads[0])
        heads_differ.append(sum(h != heads[0] for h in heads[1:]))
    return {
        "uid": sample_uid(sample),
        "task": sample.task,
        "category": sample.category,
        "method": method,
        "prompt_tokens": int(head_ids.shape[-1]),
        "budget": int(stats.budget),
        "layers": order,
        "kept_per_layer": [int(k) for k in stats.kept_per_layer],
        "kept_per_head": kept_per_head,
        "layer_budgets": [int(b) for b in stats.layer_budgets],
        "positions": positions,
        "heads_differ": heads_differ,
        "needle_spans": needle_spans(sample, tokenizer, head_ids[0].tolist()),
        "seconds": round(seconds, 3),
    }


def load_records(path: str | Path) -> list[dict[str, Any]]:
    """The records of ``retention.jsonl`` (a folder or the file); a torn last line is ignored."""
    path = Path(path)
    if path.is_dir():
        path = path / RECORDS
    if not path.is_file():
        return []
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def record_samples(
    model: Any,
    tokenizer: Any,
    samples: Iterable[Sample],
    budget: int | float | str,
    out: str | Path,
    *,
    progress: Callable[[str], None] | None = None,
    **params: Any,
) -> list[dict[str, Any]]:
    """Record every sample not yet in ``out/retention.jsonl`` (appending one line each); all records."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / RECORDS
    method = params.pop("method", "dynamickv")
    protocol = params.pop("protocol", "chat")
    records = [r for r in load_records(path) if r.get("method", "dynamickv") == method]
    done = {r["uid"] for r in records}
    with open(path, "a", encoding="utf-8") as f:
        for sample in samples:
            uid = sample_uid(sample)
            if uid in done:
                continue
            rec = record_sample(model, tokenizer, sample, budget, method, protocol, **params)
            f.write(json.dumps(rec) + "\n")
            f.flush()
            records.append(rec)
            done.add(uid)
            if progress:
                progress(f"{uid}: {rec['prompt_tokens']} tokens, {rec['seconds']:.1f} s")
    return records


# -- task dependence --------------------------------------------------------------------------
def profiles(records: Sequence[dict[str, Any]]) -> np.ndarray:
    """``[samples, layers]``: kept tokens per layer divided by the budget (1 = a uniform allocation)."""
    return np.array([[k / r["budget"] for k in r["kept_per_layer"]] for r in records], dtype=float)


def pseudo_f(x: np.ndarray, labels: Sequence[str]) -> float | None:
    """Between-group over within-group variance of the profiles (PERMANOVA's pseudo-F, Euclidean).

    ``F = [sum_g n_g |m_g - m|^2 / (G - 1)] / [sum_g sum_{i in g} |x_i - m_g|^2 / (N - G)]``; ``None``
    when it is undefined (one group, no replicate, or no spread within groups)."""
    labels = np.asarray(labels)
    groups = list(dict.fromkeys(labels.tolist()))
    n, g = len(labels), len(groups)
    if g < 2 or n <= g:
        return None
    grand = x.mean(axis=0)
    between = within = 0.0
    for name in groups:
        xs = x[labels == name]
        m = xs.mean(axis=0)
        between += len(xs) * float(((m - grand) ** 2).sum())
        within += float(((xs - m) ** 2).sum())
    if within <= 1e-12:
        return math.inf if between > 1e-12 else None
    return (between / (g - 1)) / (within / (n - g))


def task_dependence(
    records: Sequence[dict[str, Any]],
    by: str = "category",
    permutations: int = PERMUTATIONS,
    seed: int = SEED,
) -> dict[str, Any]:
    """How much DynamicKV's per-layer allocation depends on the group (``category`` or ``task``).

    ``f``: :func:`pseudo_f` of the budget-normalised per-layer profiles; ``p_value``: the share of
    ``permutations`` label shuffles (fixed ``seed``) whose F is at least as large (``(1 + k) / (1 + P)``);
    ``between_rms`` / ``within_rms``: RMS distance (per layer, in budget units) of the group means from the
    grand mean, and of samples from their group mean; ``groups``: samples per group."""
    labels = [r[by] for r in records]
    counts = {k: labels.count(k) for k in dict.fromkeys(labels)}
    out: dict[str, Any] = {"by": by, "groups": counts, "samples": len(records), "permutations": permutations}
    if not records:
        return {**out, "f": None, "p_value": None, "note": "no samples"}
    if len({len(r["kept_per_layer"]) for r in records}) != 1:
        raise InputError("records of different models (layer counts) cannot be compared")
    x = profiles(records)
    f = pseudo_f(x, labels)
    arr = np.asarray(labels)
    means = {k: x[arr == k].mean(axis=0) for k in counts}
    grand = x.mean(axis=0)
    out["between_rms"] = float(np.sqrt(np.mean([((m - grand) ** 2).mean() for m in means.values()])))
    out["within_rms"] = float(
        np.sqrt(np.mean([((x[i] - means[lab]) ** 2).mean() for i, lab in enumerate(labels)]))
    )
    if f is None:
        return {**out, "f": None, "p_value": None, "note": "needs >= 2 groups and a group with >= 2 samples"}
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(permutations):
        fp = pseudo_f(x, rng.permutation(arr))
        hits += fp is not None and fp >= f - 1e-12
    out["f"] = None if math.isinf(f) else round(f, 4)
    out["p_value"] = round((1 + hits) / (1 + permutations), 4)
    return out


def summarize(records: Sequence[dict[str, Any]], **meta: Any) -> dict[str, Any]:
    """``summary.json``: counts, per-category mean profiles and the task-dependence scores."""
    x = profiles(records) if records else np.zeros((0, 0))
    by_cat: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        by_cat.setdefault(r["category"], []).append(i)
    return {
        **meta,
        "samples": len(records),
        "tasks": sorted({r["task"] for r in records}),
        "layers": records[0]["layers"] if records else [],
        "prompt_tokens": {
            "min": min((r["prompt_tokens"] for r in records), default=0),
            "max": max((r["prompt_tokens"] for r in records), default=0),
        },
        "heads_equal_counts": all(len(set(h)) == 1 for r in records for h in r["kept_per_head"]),
        "mean_profile_by_category": {
            c: [round(v, 4) for v in x[idx].mean(axis=0).tolist()] for c, idx in by_cat.items()
        },
        "task_dependence": {
            "category": task_dependence(records, "category"),
            "task": task_dependence(records, "task"),
        },
        "record_seconds": round(sum(r["seconds"] for r in records), 1),
    }
