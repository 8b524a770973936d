"""Tables and the summary of a serving benchmark run, computed from its JSON (never typed in).

``python -m dynamickv.bench_tables serving.json [more.json] --summary h200_summary.json --md tables.md``
regenerates the Markdown tables of ``docs/benchmarks.md`` and ``docs/results/gpu/h200_summary.json``
from ``benchmarks/h200_serving.py``'s output. Every figure, ratio and "met" flag here is derived
from measured rows; a figure whose rows are missing (a part skipped or failed) is ``None``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path
from typing import Any

#: The issue's targets: (summary key, comparison, bound).
TARGETS = (
    ("throughput_ratio_32k", ">=", 10.0),
    ("decode_static_x_floor", "<=", 1.3),
    ("prefill_ratio_128k", "<=", 1.02),
    ("prefill_peak_vs_kvpress_snapkv_128k", "<=", 0.6),
    ("context_512k_runs", "==", True),
)


def _lengths(result: dict[str, Any]) -> dict[str, int]:
    return result.get("meta", {}).get("lengths") or {"32k": 32768, "128k": 131072, "512k": 524288}


def _ok(row: dict[str, Any]) -> bool:
    return "error" not in row and "skipped" not in row


def _exact(row: dict[str, Any]) -> bool:
    return row.get("tokens_agree") == row.get("tokens_compared")


def verified_modes(result: dict[str, Any]) -> dict[str, str]:
    """Decode modes a real-model check (``benchmarks/decode_agreement.py``) clears, each with a
    description of that check: the mode's greedy tokens equal the plain path's on every prompt, or
    it is no further from the float32 reference than the plain path is.

    "No further" is measured fed the reference's own tokens where the check recorded that (runs
    since 2026-11-29 evening): the mode's logits are no further from the reference's (mean relative
    L2) than plain's, and its greedy choice is not significantly worse than plain's at matching the
    reference's (paired by prompt and step, over the steps where exactly one of the two matches: a
    one-sided sign test at 5%). Older runs only have free-running decodes: no fewer prompts
    identical to the reference decode and no fewer tokens agreeing with it.

    Why: the timed model has random weights and nearly flat logits, where bf16 rounding in another
    kernel flips a greedy token within a few steps; a real model's peaked logits do not hide a wrong
    kernel that way. Two correct bf16 kernels still part at near-ties, after which each decodes
    another text, so free-running agreement counts where chaos starts as much as precision; fed the
    same tokens, every step of every mode is compared on the same history."""
    meta = result.get("agreement_meta", {})
    summary = result.get("agreement_summary", {})
    plain = summary.get("plain", {})
    out = {}
    for mode, s in summary.items():
        if not s.get("prompts") or "error" in s:
            continue
        what = (
            f"{meta.get('model', 'real model')}, {meta.get('dtype', '')}, {s['prompts']} prompts x "
            f"{s['tokens_compared'] // s['prompts']} tokens"
        )
        if s["identical"] == s["prompts"]:
            out[mode] = f"{what}: identical to plain"
        elif "forced_only_plain" in s and "forced_err" in plain:
            p = worse_than_plain_p(s)
            if s["forced_err"] <= plain["forced_err"] and p >= 0.05:
                out[mode] = (
                    f"{what}: fed the {meta.get('reference')} reference's tokens, logits {s['forced_err']:.2e} "
                    f"from it (plain {plain['forced_err']:.2e}); picks its token on {s['forced_top1']}/"
                    f"{s['forced_steps']} steps (plain {plain['forced_top1']}; of the steps where only one "
                    f"of the two does, plain {s['forced_only_plain']}, this mode {s['forced_only_mode']}: "
                    f"one-sided sign test p = {p:.2f})"
                )
        elif _no_further_from_reference(s, plain):
            out[mode] = (
                f"{what}: agrees with the {meta.get('reference')} reference on {s['reference_identical']} "
                f"prompts and {s['reference_agree']} tokens, plain on {plain['reference_identical']} and "
                f"{plain['reference_agree']}"
            )
    return out


def worse_than_plain_p(s: dict[str, Any]) -> float:
    """One-sided sign test: the chance of plain alone matching the reference on at least
    ``forced_only_plain`` of the steps where exactly one of plain and the mode does, if each were
    equally likely to be the one."""
    k, n = s["forced_only_plain"], s["forced_only_plain"] + s["forced_only_mode"]
    return sum(math.comb(n, i) for i in range(k, n + 1)) / 2**n


def _no_further_from_reference(mode: dict[str, Any], plain: dict[str, Any]) -> bool:
    """Over the same prompts, ``mode`` has no fewer prompts identical to the reference decode and no
    fewer tokens agreeing with it than ``plain`` (False where either lacks the reference columns)."""
    keys = ("reference_identical", "reference_agree")
    if not all(k in mode and k in plain for k in keys) or mode["prompts"] != plain.get("prompts"):
        return False
    return all(mode[k] >= plain[k] for k in keys)


def best_throughput(rows: list[dict[str, Any]], tokens: int, full: bool) -> dict[str, Any] | None:
    """The row with the most decode tokens/s at ``tokens`` among full-KV rows or compressed ones."""
    pick = [
        r
        for r in rows
        if r.get("tokens") == tokens
        and _ok(r)
        and r.get("tokens_per_s")
        and r["method"].startswith("fullkv") == full
    ]
    return max(pick, key=lambda r: r["tokens_per_s"], default=None)


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The headline figures and the targets, from the measured rows."""
    lengths = _lengths(result)
    out: dict[str, Any] = {
        "date": result.get("meta", {}).get("date"),
        "device": result.get("meta", {}).get("device"),
    }
    b1 = [r for r in result.get("batch1", []) if _ok(r) and r.get("x_floor")]
    at128 = [r for r in b1 if r["tokens"] == lengths["128k"] and r["method"] == "dynamickv"]
    verified = verified_modes(result)
    exact = [r for r in at128 if _exact(r) or r["mode"] in verified]
    best = min(exact, key=lambda r: r["x_floor"], default=None)
    out["decode_static_x_floor"] = best["x_floor"] if best else None
    out["decode_static_mode"] = best["mode"] if best else None
    out["decode_static_checked_by"] = (
        None
        if best is None
        else "its tokens equal plain's on the timed model"
        if _exact(best)
        else f"real-model check ({verified[best['mode']]})"
    )
    out["decode_static_ms_128k"] = best["decode_ms"] if best else None
    out["decode_x_floor_by_mode_128k"] = {r["mode"]: r["x_floor"] for r in at128}
    out["decode_tokens_agree_by_mode_128k"] = {
        r["mode"]: f"{r['tokens_agree']}/{r['tokens_compared']}" for r in at128
    }
    serving = result.get("serving", [])
    for name in ("32k", "128k"):
        comp = best_throughput(serving, lengths[name], full=False)
        full = best_throughput(serving, lengths[name], full=True)
        ratio = comp["tokens_per_s"] / full["tokens_per_s"] if comp and full else None
        out[f"throughput_ratio_{name}"] = ratio
        out[f"throughput_best_compressed_{name}"] = _brief(comp)
        out[f"throughput_best_fullkv_{name}"] = _brief(full)
        out[f"max_batch_{name}"] = {
            r["method"]: r.get("max_batch") for r in serving if r.get("tokens") == lengths[name] and _ok(r)
        }
    prefills = {(p["method"], p["tokens"]): p for p in result.get("prefill", [])}
    dyn, plain = prefills.get(("dynamickv", lengths["128k"])), prefills.get(("fullkv-plain", lengths["128k"]))
    out["prefill_ratio_128k"] = dyn["ttft_s"] / plain["ttft_s"] if dyn and plain else None
    out["prefill_ratio_source"] = "one prefill each (b1_128k)" if out["prefill_ratio_128k"] else None
    repeats = prefill_repeats(result.get("prefill_repeats", []), lengths["128k"])
    if repeats:
        out["prefill_ratio_128k"] = repeats["ratio"]
        out["prefill_ratio_source"] = f"medians of {repeats['n']} alternating prefills each (prefill_128k)"
        out["prefill_repeats_128k"] = repeats
    snap = [
        r
        for r in result.get("kvpress", [])
        if r.get("method") == "kvpress-snapkv" and r.get("tokens") == lengths["128k"]
    ]
    snap_peak = snap[0].get("prefill_peak_gib") if snap else None
    out["prefill_peak_vs_kvpress_snapkv_128k"] = (
        dyn["prefill_peak_gib"] / snap_peak if dyn and snap_peak else None
    )
    long = [r for r in b1 if r["tokens"] == lengths["512k"]]
    long_prefill = prefills.get(("dynamickv", lengths["512k"]))
    attempted = "long_512k" in result.get("parts", {}) and "skipped" not in result["parts"]["long_512k"]
    out["context_512k_runs"] = bool(long and long_prefill) if attempted else None  # None: not measured
    if long_prefill:
        out["context_512k"] = {
            "prefill_s": long_prefill["ttft_s"],
            "prefill_peak_gib": long_prefill["prefill_peak_gib"],
            "decode_ms": long[0]["decode_ms"] if long else None,
        }
    out["targets"] = {}
    for key, op, bound in TARGETS:
        v = out.get(key)
        met = None if v is None else (v >= bound if op == ">=" else v <= bound if op == "<=" else v == bound)
        out["targets"][key] = {"value": v, "target": f"{op} {bound}", "met": met}
    return out


def prefill_repeats(rows: list[dict[str, Any]], tokens: int) -> dict[str, Any] | None:
    """Median TTFT of DynamicKV over full KV from alternating repeated prefills at ``tokens``, with
    each method's range and the ratio's spread (the pairwise ratios' min and max)."""
    times: dict[str, list[float]] = {}
    for r in rows:
        if r.get("tokens") == tokens and _ok(r):
            times.setdefault(r["method"], []).append(r["ttft_s"])
    dyn, plain = times.get("dynamickv"), times.get("fullkv-plain")
    if not dyn or not plain:
        return None
    pairs = [d / p for d, p in zip(dyn, plain)]
    return {
        "n": min(len(dyn), len(plain)),
        "ratio": statistics.median(dyn) / statistics.median(plain),
        "pair_ratio_min": min(pairs),
        "pair_ratio_max": max(pairs),
        "dynamickv_s": dyn,
        "fullkv_plain_s": plain,
    }


def _brief(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {k: row.get(k) for k in ("method", "rows", "tokens_per_s", "decode_ms", "mode")}


def _fmt(v: Any, f: str = "{:.2f}") -> str:
    if v is None:
        return "-"
    return f.format(v) if isinstance(v, float) else str(v)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


#: Column specs: (header, row key or a function of the row, format).
Columns = list[tuple[str, Any, str]]

BATCH1: Columns = [
    ("tokens", "tokens", "{}"),
    ("mode", "mode", "{}"),
    ("ms/token", "decode_ms", "{:.2f}"),
    ("floor ms", "floor_ms", "{:.2f}"),
    ("x floor", "x_floor", "{:.2f}"),
    (
        "tokens agree with plain",
        lambda r: f"{r.get('tokens_agree', '-')}/{r.get('tokens_compared', '-')}",
        "{}",
    ),
    ("setup s (capture, compile)", "setup_s", "{:.1f}"),
]
SERVING: Columns = [
    ("method", "method", "{}"),
    ("tokens", "tokens", "{}"),
    ("largest batch", "max_batch", "{}"),
    ("next tried (OOM)", "max_batch_failed_at", "{}"),
    ("ms/step", "decode_ms", "{:.2f}"),
    ("tokens/s", "tokens_per_s", "{:.0f}"),
    ("TTFT s", "ttft_s", "{:.2f}"),
    ("+peak prefill GiB", "prefill_peak_gib", "{:.1f}"),
    ("cache MiB/request", "cache_mib_per_request", "{:.0f}"),
]
KVPRESS: Columns = [
    ("method", "method", "{}"),
    ("tokens", "tokens", "{}"),
    ("per-layer kept (min-max)", lambda r: f"{_fmt(r.get('kept_min'))}-{_fmt(r.get('kept_max'))}", "{}"),
    ("prefill s", "prefill_s", "{:.2f}"),
    ("+peak GiB", "prefill_peak_gib", "{:.1f}"),
    ("eager ms/token", "decode_eager_ms", "{:.2f}"),
    ("tokens/s", "tokens_per_s", "{:.0f}"),
]


def _render(rows: list[dict[str, Any]], columns: Columns) -> str:
    """A table of ``rows``; a failed or skipped row shows its error after its first two cells."""
    body = []
    for r in rows:
        if not _ok(r):
            note = (r.get("error") or r.get("skipped") or "")[:80]
            body.append(
                [_fmt(r.get(columns[0][1])), _fmt(r.get(columns[1][1])), note] + [""] * (len(columns) - 3)
            )
            continue
        body.append([key(r) if callable(key) else _fmt(r.get(key), fmt) for _, key, fmt in columns])
    return _table([h for h, _, _ in columns], body)


def _profiles(profiles: list[dict[str, Any]]) -> str:
    kinds = sorted({k for p in profiles for k in p.get("by_kind", {})})
    columns: Columns = [
        ("mode", "mode", "{}"),
        ("tokens", "tokens", "{}"),
        ("kernels/step", "kernels_per_step", "{:.0f}"),
        ("kernel ms/step", "kernel_ms_per_step", "{:.2f}"),
        ("uncaptured wall ms/step", "eager_wall_ms_per_step", "{:.2f}"),
        ("graph: kernels seen", "graph_kernels_per_step", "{:.0f}"),
        ("graph: kernel ms", "graph_kernel_ms_per_step", "{:.2f}"),
        ("graph: wall ms/step", "graph_wall_ms_per_step", "{:.2f}"),
    ]
    for k in kinds:
        columns.append((f"{k} ms (n)", lambda p, k=k: _kind(p, k), "{}"))
    return _render(profiles, columns)


def _kind(profile: dict[str, Any], kind: str) -> str:
    v = profile.get("by_kind", {}).get(kind)
    return f"{v['ms']:.2f} ({v['count']:.0f})" if v else "-"


def markdown(result: dict[str, Any]) -> str:
    """Every table of the run, in Markdown."""
    parts = ["### Batch-1 decode, DynamicKV, by decode mode\n", _render(result.get("batch1", []), BATCH1)]
    roof = result.get("roofline")
    if roof:
        parts.append("\n### GEMV roofline (batch 1) and kernel profile\n")
        parts.append(
            f"A CUDA graph of only the step's {roof['gemv_kernels']} GEMVs ({roof['gemv_gib']:.2f} GiB of "
            f"weights) takes {roof['gemv_ms']:.2f} ms ({roof['gemv_gbs']:.0f} GB/s; copy bandwidth "
            f"{roof['copy_bandwidth_gbs']:.0f} GB/s, the weights at copy bandwidth {roof['weights_floor_ms']:.2f} ms).\n"
        )
    if result.get("profiles"):
        parts.append(_profiles(result["profiles"]))
    if result.get("agreement_summary"):
        parts.append(agreement_table(result))
    repeats = prefill_repeats(result.get("prefill_repeats", []), _lengths(result)["128k"])
    if repeats:
        parts.append(
            f"\n### Prefill at {_lengths(result)['128k']} tokens, repeated\n\nTTFT s, alternating after one warm-up "
            f"each: full KV (plain transformers) {', '.join(f'{t:.2f}' for t in repeats['fullkv_plain_s'])}; "
            f"DynamicKV {', '.join(f'{t:.2f}' for t in repeats['dynamickv_s'])}. Ratio of the medians "
            f"{repeats['ratio']:.4f} (pairwise {repeats['pair_ratio_min']:.4f}-{repeats['pair_ratio_max']:.4f}).\n"
        )
    if result.get("serving"):
        parts += ["\n### Largest batch and decode throughput\n", _render(result["serving"], SERVING)]
    if result.get("kvpress"):
        parts += ["\n### kvpress 0.5.5 (batch 1, own process)\n", _render(result["kvpress"], KVPRESS)]
    targets = summary(result)["targets"]
    parts.append("\n### Targets\n")
    parts.append(
        _table(
            ["target", "value", "bound", "met"],
            [[k, _fmt(v["value"], "{:.3f}"), v["target"], _fmt(v["met"])] for k, v in targets.items()],
        )
    )
    run = [{"part": k, **v} for k, v in result.get("parts", {}).items()]
    if run:
        note = [("note", lambda r: (r.get("skipped") or r.get("error") or "")[:100], "{}")]
        columns: Columns = [
            ("part", "part", "{}"),
            ("estimate s", "estimate_s", "{:.0f}"),
            ("seconds", "seconds", "{:.1f}"),
        ]
        parts += [
            "\n### Parts of the run\n",
            _table(
                [h for h, _, _ in columns + note],
                [[_fmt(r.get(k), f) for _, k, f in columns] + [note[0][1](r)] for r in run],
            ),
        ]
    return "\n".join(parts) + "\n"


def part_of(key: str, row: dict[str, Any], lengths: dict[str, int]) -> str | None:
    """The part of ``benchmarks/h200_serving.py`` that measured ``row`` of list ``key``: its own
    ``part`` tag, or for runs that predate the tag, the part that writes such rows."""
    if "part" in row:
        return row["part"]
    size = {v: k for k, v in lengths.items()}.get(row.get("tokens"))
    if key in ("batch1", "prefill"):
        return {"128k": "b1_128k", "32k": "b1_32k", "512k": "long_512k"}.get(size)
    if key == "serving":
        return f"serve_{size}" if size else None
    return {"profiles": "b1_128k", "kvpress": "kvpress", "prefill_repeats": "prefill_128k"}.get(key)


def agreement_table(result: dict[str, Any]) -> str:
    """The real-model check of the decode modes, and which modes it clears."""
    meta, verified = result.get("agreement_meta", {}), verified_modes(result)
    ref = meta.get("reference") or "reference"
    rows = []
    for mode, s in result["agreement_summary"].items():
        if "error" in s:
            rows.append([mode, s["error"][:80]] + ["-"] * 7)
            continue
        forced = "forced_top1" in s
        rows.append([
            mode,
            f"{s['identical']}/{s['prompts']}",
            f"{s['tokens_agree']}/{s['tokens_compared']}",
            f"{s.get('reference_identical', '-')}/{s['prompts']}",
            f"{s.get('reference_agree', '-')}/{s['tokens_compared']}",
            f"{s['forced_top1']}/{s['forced_steps']}" if forced else "-",
            f"{s['forced_err']:.2e}" if forced else "-",
            f"{s['forced_only_plain']} / {s['forced_only_mode']}" if "forced_only_plain" in s else "-",
            "yes" if mode in verified else "no",
        ])  # fmt: skip
    head = (
        f"\n### Decode modes on a real model ({meta.get('model')}, {meta.get('dtype')}, {meta.get('method')} "
        f"B = {meta.get('budget')}, {meta.get('date', '')[:10]})\n"
    )
    header = ["mode", "prompts identical to plain", "tokens agreeing", f"prompts identical to {ref}",
              "tokens agreeing", f"fed {ref}'s tokens: its pick", "logit distance",
              "steps only plain / only it picks", "checked"]  # fmt: skip
    return head + "\n" + _table(header, rows)


def merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Several runs as one, later runs re-measuring parts of earlier ones (e.g. the main call, then
    ``--parts b1_128k,prefill_128k`` after a change): a part a later run ran (not skipped) replaces
    that part's rows, its record and the roofline; rows of other parts are kept. ``meta.runs`` lists
    each run's date and parts."""
    out: dict[str, Any] = {"meta": dict(results[0].get("meta", {})), "parts": {}}
    out["meta"]["runs"] = []
    for r in results:
        lengths = _lengths(r)
        ran = {p for p, rec in r.get("parts", {}).items() if "skipped" not in rec and p != "setup"}
        out["meta"]["runs"].append({"date": r.get("meta", {}).get("date"), "parts": sorted(ran)})
        for key, value in out.items():  # rows of the parts this run measured again go
            if isinstance(value, list) and key != "notes":
                out[key] = [x for x in value if part_of(key, x, lengths) not in ran]
        for key, value in r.items():
            if key == "meta":
                continue
            if key == "notes":
                out["notes"] = list(dict.fromkeys(out.get("notes", []) + value))
            elif isinstance(value, list):
                out.setdefault(key, []).extend(value)
            elif key == "parts":
                out["parts"].update({p: rec for p, rec in value.items() if p in ran or p not in out["parts"]})
            elif key != "roofline" or "roofline" in ran or key not in out:
                out[key] = value
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument(
        "json", type=Path, nargs="+", help="serving.json of benchmarks/h200_serving.py (several: merged)"
    )
    ap.add_argument("--summary", type=Path, help="write the summary JSON here")
    ap.add_argument("--md", type=Path, help="write the Markdown tables here")
    args = ap.parse_args()
    result = merge([json.loads(p.read_text()) for p in args.json])
    tables, s = markdown(result), summary(result)
    if args.summary:
        args.summary.write_text(json.dumps(s, indent=1))
    if args.md:
        args.md.write_text(tables)
    print(tables)
    print(json.dumps(s, indent=1))


if __name__ == "__main__":
    main()
