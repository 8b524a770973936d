"""``dynamickv bench --batch N`` / ``--max-batch``: batched decode throughput per method.

For each context length and method: a few distinct requests are prefilled alone (time to first
token, peak prefill memory), N rows are filled with copies of them (decode cost does not depend
on the values), and the rows decode together in a :class:`~dynamickv.batch_decoder.BatchDecoder` (CUDA
graph on GPU). With ``--max-batch``, N is the largest batch that fits (:func:`search_max_batch`).
``fullkv`` gives two rows: ``fullkv-plain`` (plain transformers, eager) and ``fullkv`` (the full
cache in the static decoder).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from . import bench_file
from .bench_serving import (
    decoder_rate,
    decoder_row_bytes,
    plain_rate,
    plain_row_bytes,
    prefill,
    release,
    rows_estimate,
    search_max_batch,
)


def distinct_requests(
    model, method: str, budget: int, n: int, count: int, device, seed: int = 0
) -> list[dict[str, Any]]:
    """``count`` requests of ``n`` random tokens, each prefilled (and compressed) alone."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        ids = torch.randint(0, model.config.vocab_size, (1, n), generator=g).to(device)
        out.append(prefill(model, method, budget, ids))
    return out


def _summary(method: str, n: int, budget: int, requests: list[dict[str, Any]]) -> dict[str, Any]:
    row: dict[str, Any] = {"method": method, "tokens": n, "budget": None if "fullkv" in method else budget}
    row["distinct_requests"] = len(requests)
    row["ttft_s"] = sum(r["ttft_s"] for r in requests) / len(requests)
    peaks = [r["prefill_peak_gib"] for r in requests if r["prefill_peak_gib"] is not None]
    row["prefill_peak_gib"] = max(peaks) if peaks else None  # None: not measured (CPU)
    row["cache_mib_per_request"] = requests[0]["cache_bytes"] / 2**20
    for key in ("kept_mean", "kept_min", "kept_max", "selection_s"):
        if key in requests[0]:
            row[key] = requests[0][key]
    return row


def method_rows(
    model,
    method: str,
    budget: int,
    n: int,
    batch: int | None,
    steps: int,
    requests: list[dict[str, Any]],
    mode: str = "auto",
) -> list[dict[str, Any]]:
    """Throughput rows for ``method`` at ``batch`` rows, or at the largest batch (``batch=None``)."""
    device = requests[0]["first"].device
    out = []
    kinds = ["fullkv-plain", "fullkv"] if method == "fullkv" else [method]
    for kind in kinds:
        row = _summary(kind, n, budget, requests)
        if kind == "fullkv-plain":

            def trial(rows: int, _r=requests[0]) -> dict[str, Any]:
                return plain_rate(model, _r, rows, min(steps, 12))

            estimate = rows_estimate(plain_row_bytes(model, requests[0]), device)
        else:

            def trial(rows: int) -> dict[str, Any]:
                r = decoder_rate(model, requests, rows, steps, mode=mode)
                r.pop("tokens")
                return r

            estimate = rows_estimate(decoder_row_bytes(model, requests, steps), device)
        try:
            if batch is None:
                found = search_max_batch(trial, estimate)
                row.update(found.pop("best") or {})
                row["max_batch"] = found["rows"]
                row["max_batch_failed_at"] = found["failed_at"]
                row["trials"] = found["trials"]
            else:
                row.update(trial(batch))
        except Exception as e:  # recorded, the run goes on
            row["error"] = f"{type(e).__name__}: {e}"[:500]
        release(device)
        out.append(row)
    return out


def serving_bench(
    config: str,
    methods: list[str],
    budget: int,
    lengths: list[int],
    device: str,
    batch: int | None,
    steps: int = 16,
    distinct: int = 2,
    mode: str = "auto",
    out: Path | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Every (length, method) at ``batch`` rows (``None``: the largest that fits); ``out`` is
    rewritten after each (length, method) and ``resume`` skips those it holds (see
    :mod:`dynamickv.bench_file`; a (length, method) cut short is measured again)."""
    from .bench import build_model, environment

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = build_model(config, device, dtype)
    meta = environment(config, budget, device, model)
    meta.update(batch=batch, steps=steps, distinct=distinct, mode=mode)
    rows = bench_file.resumed_rows(out, meta) if resume and out is not None else []
    done = meta.setdefault("done", [])  # the (method, length) pairs whose rows are all in
    rows = [r for r in rows if r.get("of") in done]
    for n in lengths:
        for method in methods:
            if [method, n] in done:
                continue
            name = "fullkv-plain" if method == "fullkv" else method
            count = 1 if method == "fullkv" else max(1, min(distinct, batch or distinct))
            requests = distinct_requests(model, name, budget, n, count, device)
            for row in method_rows(model, method, budget, n, batch, steps, requests, mode):
                rows.append(row | {"of": [method, n]})
                print(json.dumps(row), flush=True)
            del requests
            release(device)
            done.append([method, n])
            bench_file.save(out, meta, rows, complete=False)
    bench_file.save(out, meta, rows, complete=True)
    print_serving_table(rows)
    return {"meta": meta, "rows": rows, "complete": True}


def print_serving_table(rows: list[dict[str, Any]]) -> None:
    cols = [
        ("method", "{}"),
        ("tokens", "{}"),
        ("rows", "{}"),
        ("ttft_s", "{:.2f}"),
        ("prefill_peak_gib", "{:.1f}"),
        ("decode_ms", "{:.2f}"),
        ("tokens_per_s", "{:.0f}"),
        ("buffer_gib", "{:.2f}"),
    ]
    print(" | ".join(c for c, _ in cols))
    for r in rows:
        print(
            " | ".join("-" if r.get(c) is None else f.format(r[c]) for c, f in cols)
            + (" | " + r["error"][:80] if "error" in r else "")
        )
