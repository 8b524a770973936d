"""The analysis of ``benchmarks/windowkv_mode_layers.py``: which layer's attention feature, with which
threshold, agrees with WindowKV's task categories, per model and with one rule for both; the report, the
plot and the echo control. See that script's docstring for the features and the protocol."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from figures import pyplot, save
from windowkv_auto import SETS, _predict, agreement, fit_threshold

BIN = 8  # tokens per bin
HEAD_BINS = 16  # the first 128 tokens: the prompt's opening instruction
FEATURES = ("entropy", "top1", "win16", "body", "far", "head")
#: one saved layer: each feature as the mean over KV heads and their maximum, then the peak's position
COLUMNS = [f"{f}_{a}" for f in FEATURES for a in ("mean", "max")] + ["peak_pos"]
#: relative depths of the shared rule (the layer ``floor(d * L)`` of an ``L``-layer model)
DEPTHS = [i / 20 for i in range(20)]
TARGET = 0.9  # issue 12's agreement target
TRANSFER_TOP = 10  # how far down the source's ranking the transfer study looks, in hindsight


def _rows(rows: list[dict], layer_of: Any, feature: str) -> list[dict]:
    return [dict(r, stats={"x": r["layers"][layer_of(r)][feature]}) for r in rows]


def _rates(rs: list[dict]) -> dict[str, float | None]:
    a = agreement(rs, "fit")
    return {s: (a["sets"][s]["rate"] if s in a["sets"] else None) for s in SETS}


def score_rule(rows: list[dict], fit_rows: list[dict], loto_pool: list[dict]) -> dict[str, Any]:
    """Fit one threshold on ``fit_rows`` (the ``dev`` rows it may see), score it on ``rows``' dev and
    check splits, and leave-one-task-out (refitted on ``loto_pool`` without the task)."""
    thr, direction = fit_threshold(fit_rows, "x")

    def apply(rs: list[dict], t: float, d: str) -> list[dict]:
        return [dict(r, fit=_predict(r["stats"]["x"], t, d)) for r in rs]

    loto: list[dict] = []
    for task in sorted({r["task"] for r in rows}):
        t, d = fit_threshold([r for r in loto_pool if r["task"] != task], "x")
        loto += apply([r for r in rows if r["task"] == task], t, d)
    return {
        "threshold": thr,
        "direction": direction,
        "dev": _rates(apply([r for r in rows if r["split"] == "dev"], thr, direction)),
        "check": _rates(apply([r for r in rows if r["split"] == "check"], thr, direction)),
        "leave_one_task_out": _rates(loto),
    }


def _key(res: dict[str, Any]) -> tuple[float, float]:
    """Rank by the worst RULER agreement of check and leave-one-task-out, then by their worst set."""
    ruler = min(res["check"]["ruler"] or 0, res["leave_one_task_out"]["ruler"] or 0)
    worst = min(v for part in ("check", "leave_one_task_out") for v in res[part].values() if v is not None)
    return ruler, worst


def study(rows: list[dict]) -> dict[str, Any]:
    """Both studies for one protocol's rows (all models)."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    names = COLUMNS[:-1]
    per_model: dict[str, list[dict]] = {}
    for m in models:
        mine = [r for r in rows if r["model"] == m]
        out = []
        for layer in range(len(mine[0]["layers"])):
            for name in names:
                rs = _rows(mine, lambda r, layer=layer: layer, name)
                res = score_rule(rs, [r for r in rs if r["split"] == "dev"], rs)
                out.append({"layer": layer, "depth": layer / len(mine[0]["layers"]), "feature": name, **res})
        per_model[m] = sorted(out, key=_key, reverse=True)
    shared = []
    for depth in DEPTHS:
        for name in names:
            rs = _rows(rows, lambda r, d=depth: int(d * len(r["layers"])), name)
            fit = [r for r in rs if r["split"] == "dev"]
            res = {m: score_rule([r for r in rs if r["model"] == m], fit, rs) for m in models}
            worst = min((_key(v) for v in res.values()), default=(0.0, 0.0))
            thr = res[models[0]]["threshold"], res[models[0]]["direction"]
            shared.append({"depth": depth, "feature": name, "threshold": thr, "per_model": res, "key": worst})
    shared.sort(key=lambda s: s["key"], reverse=True)
    baseline = {m: _rates([dict(r, fit="aggregation") for r in rows if r["model"] == m]) for m in models}
    return {
        "per_model": per_model,
        "shared": shared,
        "transfer": transfer(rows, per_model),
        "all_aggregation": baseline,
    }


def _apply_at_depth(rule: dict, rows: list[dict]) -> tuple[int, list[dict]]:
    """``rule`` (fitted on another model) on one model's ``rows``, at its nearest layer of the rule's
    relative depth: that layer, and the rows with their call as ``fit``."""
    depth = len(rows[0]["layers"])
    layer = min(depth - 1, round(rule["depth"] * depth))
    feature, threshold, direction = rule["feature"], rule["threshold"], rule["direction"]
    return layer, [dict(r, fit=_predict(r["layers"][layer][feature], threshold, direction)) for r in rows]


def transfer(rows: list[dict], per_model: dict[str, list[dict]]) -> list[dict]:
    """Each model's best rule, chosen and fitted on that model alone, applied unchanged to every other
    model at the nearest layer of the same relative depth and scored on all its samples: a rule
    calibrated once on one model of a family and used on a sibling whose labels it never saw."""
    out = []
    for source, ranked in per_model.items():
        for target in per_model:
            mine = [r for r in rows if r["model"] == target]
            if target == source or not mine or not ranked:
                continue
            rule = ranked[0]
            layer, called = _apply_at_depth(rule, mine)
            # in hindsight, for the record: which of the source's next-best rules would have carried over
            carried = [
                rank
                for rank, other in enumerate(ranked[:TRANSFER_TOP], 1)
                if all(v is None or v >= TARGET for v in _rates(_apply_at_depth(other, mine)[1]).values())
            ]
            out.append(
                {
                    "source": source,
                    "target": target,
                    "source_layer": rule["layer"],
                    "target_layer": layer,
                    "feature": rule["feature"],
                    "direction": rule["direction"],
                    "threshold": rule["threshold"],
                    "sets": _rates(called),
                    "pooled": agreement(called, "fit")["pooled"]["rate"],
                    "qa_called": sum(
                        r["fit"] == "localization" for r in called if r["expected"] == "localization"
                    ),
                    "qa": sum(r["expected"] == "localization" for r in called),
                    "top_ranks_carried": carried,
                }
            )
    return out


def peak_table(rows: list[dict], model: str, layer: int) -> dict[str, float]:
    """Per task: the share of samples whose strongest body bin at ``layer`` lies in the first 128
    tokens (the prompt's opening instruction)."""
    by_task: dict[str, list[int]] = defaultdict(list)
    for r in rows:
        if r["model"] == model:
            by_task[r["task"]].append(r["layers"][layer]["peak_pos"] < HEAD_BINS * BIN)
    return {t: sum(v) / len(v) for t, v in by_task.items()}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}"


def _sets(r: dict[str, float | None]) -> str:
    return "/".join(_pct(r[s]) for s in SETS)


def text_report(result: dict[str, Any], top: int = 5) -> str:
    meta = result["meta"]
    lines = [
        "Any layer's attention vs WindowKV's task categories (QA -> localization, others -> aggregation)",
        f"date {meta['date']}  machine {meta['machine']}  transformers {meta['transformers']}",
        f"command: {meta['command']}",
        *(
            f"and the rows of: {m['command']}  ({m['date']}, {m['machine']})"
            for m in meta.get("more_runs", [])
        ),
        "columns: agreement in % on ruler/niah/multi_news, threshold fitted on dev; check = other seed,",
        "depths and records; loto = leave-one-task-out. The target is 90 on ruler for every model.",
        "Layers and features are ranked by their check and loto agreement, i.e. chosen on the held-out",
        "parts: each 'best' is an upper bound on what a single-layer threshold rule could do.",
        "",
    ]
    for protocol, st in result["studies"].items():
        lines.append(f"== protocol {protocol}")
        for m, base in st["all_aggregation"].items():
            lines.append(f"  {m}: all-aggregation {_sets(base)}")
        for m, best in st["per_model"].items():
            lines.append(f"  {m}, best single layers (a rule fitted to this model):")
            for b in best[:top]:
                lines.append(
                    f"    L{b['layer']:<3} {b['feature']:<13} {b['direction']} {b['threshold']:.4g}  dev "
                    f"{_sets(b['dev'])}  check {_sets(b['check'])}  loto {_sets(b['leave_one_task_out'])}"
                )
            if best:
                peaks = peak_table(result["rows_by_protocol"][protocol], m, best[0]["layer"])
                lines.append(
                    f"    strongest bin in the first 128 tokens at L{best[0]['layer']}: "
                    + ", ".join(f"{t} {_pct(v)}%" for t, v in peaks.items())
                )
        lines.append("  one rule for all models (same relative depth, one threshold), best:")
        for s in st["shared"][:top]:
            per = "  ".join(
                f"{m} check {_sets(v['check'])} loto {_sets(v['leave_one_task_out'])}"
                for m, v in s["per_model"].items()
            )
            lines.append(
                f"    depth {s['depth']:.2f} {s['feature']:<13} {s['threshold'][1]} {s['threshold'][0]:.4g}  {per}"
            )
        if st["transfer"]:
            lines.append("  each model's best rule applied unchanged to another model (same relative depth):")
        for t in st["transfer"]:
            lines.append(
                f"    {t['source']} L{t['source_layer']} -> {t['target']} L{t['target_layer']}  {t['feature']:<13} "
                f"{t['direction']} {t['threshold']:.4g}  all samples {_sets(t['sets'])}  pooled {_pct(t['pooled'])}"
                f"  QA called localization {t['qa_called']}/{t['qa']}"
                f"  (of its {TRANSFER_TOP} best rules, ranks reaching 90 on every set here: "
                f"{', '.join(map(str, t['top_ranks_carried'])) or 'none'})"
            )
        lines.append("")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    """One panel per protocol: the best RULER agreement (worst of check and leave-one-task-out) at
    each relative depth, per model with its own rule, and with one rule for all models."""
    plt = pyplot()

    studies = result["studies"]
    fig, axes = plt.subplots(1, len(studies), figsize=(4.2 * len(studies), 3.8), sharey=True, squeeze=False)
    for ax, (protocol, st) in zip(axes[0], studies.items()):
        for m, best in st["per_model"].items():
            by_layer: dict[float, float] = defaultdict(float)
            for b in best:
                by_layer[b["depth"]] = max(by_layer[b["depth"]], _key(b)[0])
            xs = sorted(by_layer)
            ax.plot(xs, [100 * by_layer[x] for x in xs], marker="o", ms=3, lw=1, label=f"{m} (its own rule)")
        by_depth: dict[float, float] = defaultdict(float)
        for sh in st["shared"]:
            by_depth[sh["depth"]] = max(by_depth[sh["depth"]], sh["key"][0])
        xs = sorted(by_depth)
        ax.plot(xs, [100 * by_depth[x] for x in xs], color="black", lw=2, label="one rule for all models")
        base = min(v["ruler"] or 0 for v in st["all_aggregation"].values())
        ax.axhline(90, color="green", ls="--", lw=1, label="target 90%")
        ax.axhline(100 * base, color="grey", ls=":", lw=1, label=f"all aggregation ({100 * base:.1f}%)")
        ax.set_xlabel("relative depth of the layer")
        ax.set_title(f"{protocol} protocol", fontsize=10)
    axes[0][0].set_ylabel("RULER agreement (%), worst of\ncheck and leave-one-task-out")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.suptitle("Best single-layer attention feature vs WindowKV's task categories", fontsize=11)
    save(fig, path, dpi=130, rect=(0, 0.07, 1, 1))


def echo_control(result: dict[str, Any], echo: dict[str, Any]) -> list[str]:
    """How the best rules of ``result`` classify the QA prompts with their echo and without it."""
    lines = ["== echo control: QA prompts with the restated instruction removed (drop_echo)"]
    main = {(r["model"], r["protocol"], r["uid"]): r for r in result["rows"]}
    for protocol, st in result["studies"].items():
        rows = [r for r in echo["rows"] if r["protocol"] == protocol]
        if not rows:
            continue
        rules = [(m, best[0]) for m, best in st["per_model"].items()]
        shared = st["shared"][0]
        rules += [
            (m, dict(shared, layer=None, direction=shared["threshold"][1], threshold=shared["threshold"][0]))
            for m in shared["per_model"]
        ]
        for model, rule in rules:
            mine = [r for r in rows if r["model"] == model]
            if not mine:
                continue

            def called(r: dict, rule: dict = rule) -> bool:
                layer = rule["layer"] if rule["layer"] is not None else int(rule["depth"] * len(r["layers"]))
                return (
                    _predict(r["layers"][layer][rule["feature"]], rule["threshold"], rule["direction"])
                    == "localization"
                )

            before = sum(called(main[(model, protocol, r["uid"])]) for r in mine)
            after = sum(called(r) for r in mine)
            where = (
                f"L{rule['layer']}" if rule["layer"] is not None else f"depth {rule['depth']:.2f} (shared)"
            )
            removed = sorted(r["echo_tokens"] for r in mine)
            lines.append(
                f"  {protocol:<8} {model:<20} {where:<20} {rule['feature']:<13} QA called localization: "
                f"{before}/{len(mine)} with the echo, {after}/{len(mine)} without "
                f"(removed {removed[0]}-{removed[-1]} tokens)"
            )
    return [*lines, ""]


def merge_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several saved runs (say, a third model measured later) as one: the first run's metadata, the
    others' under ``more_runs``, and every row. A sample measured twice (the same run given twice, or
    a model in two runs) would count twice in every fit: ``ValueError``."""
    meta = dict(runs[0]["meta"], more_runs=[r["meta"] for r in runs[1:]])
    rows = [row for r in runs for row in r["rows"]]
    seen: set[tuple[str, str, str]] = set()
    for row in rows:
        key = (row["model"], row["protocol"], row["uid"])
        if key in seen:
            raise ValueError(f"{key[0]} sample {key[2]} ({key[1]} protocol) is in more than one of the runs")
        seen.add(key)
    return {"meta": meta, "rows": rows}


def analyse(result: dict[str, Any], out: Path, echo: dict[str, Any] | None = None) -> None:
    for r in result["rows"]:
        r["layers"] = [dict(zip(COLUMNS, layer)) for layer in r["layers"]]
    by_protocol: dict[str, list[dict]] = defaultdict(list)
    for r in result["rows"]:
        by_protocol[r["protocol"]].append(r)
    result["studies"] = {p: study(rs) for p, rs in by_protocol.items()}
    result["rows_by_protocol"] = by_protocol
    report = text_report(result)
    if echo is not None:
        for r in echo["rows"]:
            r["layers"] = [dict(zip(COLUMNS, layer)) for layer in r["layers"]]
        report += "\n".join(echo_control(result, echo)) + "\n"
    out.with_suffix(".txt").write_text(report)
    plot(result, out.with_suffix(".png"))
    del result["rows_by_protocol"]
    summary = {
        "meta": result["meta"],
        "studies": {
            p: {
                "all_aggregation": s["all_aggregation"],
                "per_model": {m: v[:20] for m, v in s["per_model"].items()},
                "shared": [dict(x, key=list(x["key"])) for x in s["shared"][:20]],
                "transfer": s["transfer"],
            }
            for p, s in result["studies"].items()
        },
    }
    out.with_name(out.stem + "_study.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(report)
