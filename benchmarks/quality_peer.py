"""kvpress as a quality peer of a ``dynamickv eval`` run: same samples, same protocol, same scorer.

    # 1. our side: the run's prompts, split exactly as the run split them (token ids)
    python benchmarks/quality_peer.py prepare --run runs/ruler4k --out runs/ruler4k/peer_prompts.jsonl
    # 2. kvpress's side, in its own process (see benchmarks/kvpress_quality_peer.py)
    PYTHONPATH=$KVSITE python benchmarks/kvpress_quality_peer.py --model-dir $MODEL_DIR \
        --prompts runs/ruler4k/peer_prompts.jsonl --budgets 64,128,256 --out runs/ruler4k/peer.jsonl
    # 3. our side: score kvpress's answers with the run's scorer; one table with both libraries
    python benchmarks/quality_peer.py score --run runs/ruler4k --peer runs/ruler4k/peer.jsonl

``prepare`` rebuilds the run's samples from its ``config.json`` (benchmark, model, tasks, lengths,
samples, seed, protocol) and checks their fingerprint against the run's, so both libraries answer
the very same token ids. ``score`` writes ``peer_metrics.json`` and ``comparison.md`` into the run
folder: average over tasks per method and budget, dynamickv's rows and kvpress's, with sample counts,
the protocol, and how often kvpress's uncompressed answers equal dynamickv's FullKV answers (the two
libraries run different transformers versions; this bounds what a difference between them can mean).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any


def _samples_of_run(run: Path):
    from dynamickv.eval import cli as ecli
    from dynamickv.eval.prompts import samples_digest
    from dynamickv.models import load_tokenizer

    config = json.loads((run / "config.json").read_text())
    tok = load_tokenizer(config["model"])
    records = None
    if config["benchmark"] in ("longbench", "longbench-e"):
        from dynamickv.eval import longbench

        e = config["benchmark"] == "longbench-e"
        records = {t: longbench.load_task(t, Path(config["data_dir"]), e=e) for t in config["tasks"]}
    samples = ecli.build_samples(
        config["benchmark"],
        tok,
        None,
        tasks=config["tasks"],
        lengths=config.get("lengths") or [],
        depths=config.get("depths") or [],
        samples=config.get("samples"),
        seed=config.get("seed") or 42,
        records=records,
        max_input_tokens=config.get("max_input_tokens"),
        model_name=config["model"],
    )
    if samples_digest(samples) != config.get("samples_digest"):
        raise SystemExit(f"error: the samples rebuilt from {run}/config.json differ from the run's")
    return config, tok, samples


def prepare(run: Path, out: Path) -> None:
    from dynamickv.eval.prompts import sample_uid, split_prompt

    config, tok, samples = _samples_of_run(run)
    cap = config.get("max_new_tokens")
    with open(out, "w", encoding="utf-8") as fh:
        for s in samples:
            head, tail = split_prompt(s, tok, config.get("protocol") or "chat")
            new = s.max_new_tokens if cap is None else min(cap, s.max_new_tokens)
            row = {"uid": sample_uid(s), "task": s.task, "head": head[0].tolist(), "tail": tail[0].tolist()}
            fh.write(json.dumps({**row, "max_new_tokens": new}) + "\n")
    print(f"{len(samples)} prompts ({config.get('protocol')} protocol) -> {out}")


def _records(run: Path) -> list[dict[str, Any]]:
    """The run's predictions: ``predictions.jsonl``, or the shard files of a sharded run cut short."""
    from dynamickv.eval import distributed
    from dynamickv.eval.runner import load_predictions, record_key

    records = load_predictions(run / "predictions.jsonl", repair=False)
    seen = {record_key(r) for r in records}
    for shard in distributed.shard_files(run):
        for r in load_predictions(shard, repair=False):
            if record_key(r) not in seen:
                seen.add(record_key(r))
                records.append(r)
    return records


def _cell(r: dict[str, Any]) -> tuple[str, str]:
    return r["method"], "full" if r["budget"] is None else str(r["budget"])


def _read_peer(files: list[Path]) -> list[dict[str, Any]]:
    """kvpress's records in ``files``, those that failed (``error``) left out."""
    records = [json.loads(line) for f in files for line in f.read_text().splitlines() if line.strip()]
    return [r for r in records if "error" not in r]


def _task_scores(scorer: Any, by_uid: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, float]:
    """Each task's score over ``records`` (the benchmark's scorer, per task, as the harness scores)."""
    per_task: dict[str, list] = defaultdict(list)
    for r in records:
        per_task[r["task"]].append((by_uid[r["uid"]], r["prediction"]))
    return {t: float(scorer.task(t, [p[0] for p in v], [p[1] for p in v])[0]) for t, v in per_task.items()}


def kept_exactly(peer: list[dict[str, Any]]) -> dict[str, list[int]]:
    """Per uniform kvpress cell, ``[records that kept exactly B in every compressed layer, records]``.

    Why: a table that sets two libraries side by side is only fair if both hold B tokens per layer.
    kvpress's budget is a ratio; with ``1 - B / n`` it kept ``B - 1`` on most prompts, and nothing
    said so until kept tokens were compared by hand. A layer holding every prompt token is not
    counted as compressed (Gemma 3's sliding layers, which kvpress leaves alone); a record with no
    compressed layer (``AdaKVPress``, which masks instead of dropping) does not count as exact. A
    built pyramid gives layers different budgets by design, so those records are left out."""
    cells: dict[str, list[int]] = {}
    for r in peer:
        if r["budget"] is None or r.get("pyramid") or "kept_tokens_per_layer" not in r:
            continue
        held = [k for k in r["kept_tokens_per_layer"] if k < r["compressed_tokens"]]
        cell = cells.setdefault(f"{r['method']}@{r['budget']}", [0, 0])
        cell[0] += bool(held) and all(k == r["budget"] for k in held)
        cell[1] += 1
    return cells


def score(run: Path, peer_files: list[Path], out: Path | None = None) -> dict[str, Any]:
    """Both libraries on the *same* samples: those every configuration of both answered (a run cut
    short by a time limit leaves some cells with fewer samples; comparing them would compare sets).
    The tables go to ``out`` (default: the run folder), so that a committed run can be scored
    against a new peer without overwriting its own tables."""
    from dynamickv.eval.prompts import sample_uid
    from dynamickv.eval.runner import get_scorer

    config, _, samples = _samples_of_run(run)
    scorer = get_scorer(config["benchmark"])
    by_uid = {sample_uid(s): s for s in samples}
    peer = _read_peer(peer_files)
    ours = _records(run)
    cells: dict[tuple[str, str], set[str]] = defaultdict(set)
    for r in ours + peer:
        cells[_cell(r)].add(r["uid"])
    common = set.intersection(*cells.values()) if cells else set()
    common &= set(by_uid)
    full = {r["uid"]: r["prediction"] for r in ours if r["method"] == "fullkv"}
    agree = [
        full[r["uid"]] == r["prediction"] for r in peer if r["method"] == "kvpress-none" and r["uid"] in full
    ]
    tables: dict[str, dict[str, Any]] = {}
    for source, records in (("dynamickv", ours), ("kvpress", peer)):
        grouped: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for r in records:
            if r["uid"] in common:
                grouped[_cell(r)].append(r)
        for (method, budget), cell in grouped.items():
            task_scores = _task_scores(scorer, by_uid, cell)
            entry = tables.setdefault(method, {"source": source, "budgets": {}})
            entry["budgets"][budget] = {
                "average": sum(task_scores.values()) / len(task_scores),
                "tasks": task_scores,
                "n": len(cell),
            }
    pyramids = defaultdict(set)
    for r in peer:
        if "pyramid" in r:
            pyramids[(r["method"], str(r["budget"]))].add(r["pyramid"])
    tasks = defaultdict(int)
    for uid in common:
        tasks[by_uid[uid].task] += 1
    result = {
        "benchmark": config["benchmark"],
        "model": config["model"],
        "protocol": config.get("protocol"),
        "lengths": config.get("lengths"),
        "seed": config.get("seed"),
        "samples": len(samples),
        "common_samples": len(common),
        "common_per_task": dict(sorted(tasks.items())),
        "fullkv_agreement": {"equal": sum(agree), "of": len(agree)},
        "pyramid_built": {f"{m}@{b}": sorted(v) for (m, b), v in pyramids.items()},
        "kept_exactly_budget": kept_exactly(peer),
        "methods": tables,
    }
    out = out or run
    out.mkdir(parents=True, exist_ok=True)
    (out / "peer_metrics.json").write_text(json.dumps(result, indent=1))
    (out / "comparison.md").write_text(comparison_md(result))
    print(comparison_md(result))
    return result


def diff(run: Path, old_files: list[Path], new_files: list[Path], out: Path | None = None) -> dict[str, Any]:
    """Two kvpress peers of one run, cell by cell, on the samples both answered: how many answers
    changed, and the score of each on those samples. Why: a peer re-run with other settings (the
    matched ratio of 2026-12-01) should say how far its change moved kvpress, not only where it
    ended up; the old rows may cover fewer samples than the new ones."""
    from dynamickv.eval.prompts import sample_uid
    from dynamickv.eval.runner import get_scorer

    config, _, samples = _samples_of_run(run)
    scorer = get_scorer(config["benchmark"])
    by_uid = {sample_uid(s): s for s in samples}
    old, new = ({(r["uid"], *_cell(r)): r for r in _read_peer(files)} for files in (old_files, new_files))

    def average(records: list[dict[str, Any]]) -> float:
        scores = _task_scores(scorer, by_uid, records)
        return sum(scores.values()) / len(scores)

    shared: dict[tuple[str, str], list[tuple[str, str, str]]] = defaultdict(list)
    for key in sorted(old.keys() & new.keys()):  # sorted: the same sums, bit for bit, every run
        if key[0] in by_uid:
            shared[key[1:]].append(key)
    cells: dict[str, dict[str, Any]] = {}
    for (method, budget), keys in sorted(shared.items()):
        cells[f"{method}@{budget}"] = {
            "samples": len(keys),
            "equal_answers": sum(old[k]["prediction"] == new[k]["prediction"] for k in keys),
            "old": average([old[k] for k in keys]),
            "new": average([new[k] for k in keys]),
        }
    result = {"run": str(run), "model": config["model"], "old": [str(f) for f in old_files], "cells": cells}
    lines = [f"{'cell':34} {'samples':>7} {'equal':>6} {'old':>6} {'new':>6}"]
    for name, c in cells.items():
        lines.append(f"{name:34} {c['samples']:7d} {c['equal_answers']:6d} {c['old']:6.1f} {c['new']:6.1f}")
    print("\n".join(lines))
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
    return result


def comparison_md(result: dict[str, Any]) -> str:
    budgets = sorted({b for m in result["methods"].values() for b in m["budgets"] if b != "full"}, key=int)
    lines = [
        f"# {result['benchmark']} - {result['model']}: dynamickv and kvpress 0.5.5, same prompts",
        "",
        f"Protocol: {result['protocol']}. Every cell is computed on the same {result['common_samples']} samples "
        f"(of {result['samples']}): those every configuration of both libraries answered. Per task: "
        + ", ".join(f"{t} {n}" for t, n in result["common_per_task"].items())
        + ". Average over tasks of the benchmark's score.",
        f"kvpress's uncompressed answers equal dynamickv's FullKV answers on "
        f"{result['fullkv_agreement']['equal']}/{result['fullkv_agreement']['of']} samples.",
        "",
        "| method | source | " + " | ".join(f"B={b}" for b in budgets) + " | full |",
        "|---|---|" + "---:|" * (len(budgets) + 1),
    ]
    for name, entry in sorted(result["methods"].items(), key=lambda kv: (kv[1]["source"], kv[0])):
        cells = []
        for b in [*budgets, "full"]:
            cell = entry["budgets"].get(b)
            cells.append("" if cell is None else f"{cell['average']:.1f}")
        lines.append(f"| {name} | {entry['source']} | " + " | ".join(cells) + " |")
    if result["pyramid_built"]:
        lines += [
            "",
            "kvpress PyramidKV built a pyramid (else: uniform SnapKV budgets): "
            + ", ".join(f"{k}: {v}" for k, v in sorted(result["pyramid_built"].items())),
        ]
    if result.get("kept_exactly_budget"):
        lines += [
            "",
            "kvpress records that kept exactly B tokens in every compressed layer (uniform budgets): "
            + ", ".join(f"{k}: {v[0]}/{v[1]}" for k, v in sorted(result["kept_exactly_budget"].items())),
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    s = sub.add_parser("score")
    s.add_argument("--run", type=Path, required=True)
    s.add_argument("--peer", type=Path, nargs="+", required=True)
    s.add_argument("--out", type=Path, default=None, help="folder for the tables (default: the run folder)")
    d = sub.add_parser("diff", help="two peers of one run, cell by cell")
    d.add_argument("--run", type=Path, required=True)
    d.add_argument("--old", type=Path, nargs="+", required=True)
    d.add_argument("--new", type=Path, nargs="+", required=True)
    d.add_argument("--out", type=Path, default=None, help="JSON file")
    args = ap.parse_args()
    if args.cmd == "prepare":
        prepare(args.run, args.out)
    elif args.cmd == "diff":
        diff(args.run, args.old, args.new, args.out)
    else:
        score(args.run, args.peer, args.out)


if __name__ == "__main__":
    main()
