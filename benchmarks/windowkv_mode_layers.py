"""Can any layer's attention tell WindowKV's task categories apart? Every layer, two models, three protocols.

    python benchmarks/windowkv_mode_layers.py --models smollm2-135m:4096,qwen2.5-coder-0.5b:8192 \
        --ruler-samples 4 --seeds 1,2 --longbench-dir ../shared/data/longbench --multi-news 15 \
        --device cuda --out docs/results/windowkv_mode_layers.json
    python benchmarks/windowkv_mode_layers.py --report docs/results/windowkv_mode_layers.json   # re-analyse

On a machine without the benchmark data (the GPU machine), build the prompts here first
(``--save-prompts DIR``, same sample options) and pass ``--prompts DIR`` there.

Issue 12, item 5 asks for a training-free WindowKV ``auto`` that agrees with the task categories (QA ->
localization, everything else -> aggregation) on 90% of RULER, NIAH and multi_news samples on both
models. ``benchmarks/windowkv_auto.py`` studies the first compressed layer, where ``auto`` decides. This
script asks the wider question: whether *any* layer's observation attention carries the category, so
that a rule deciding later in the prefill (holding the earlier layers whole until then) could reach it.

For every sample (the same sets and splits as ``windowkv_auto.py``) and protocol it runs the whole
prefill with nothing dropped and records, at every layer, features of the attention of the last 16
prompt queries (WindowKV's localization window), per KV head, with tokens binned by 8:

* the *body* is the prompt without its first 8 tokens (attention sinks) and its last 256 (recency);
* ``entropy`` (normalised), ``top1`` (largest bin) and ``win16`` (largest 128-token window): how
  concentrated the attention is inside the body;
* ``body``: the body's share of all the attention; ``far``: its share of the non-sink attention;
* ``head``: the non-sink share on the prompt's first 128 tokens (its opening instruction);

each averaged over the KV heads (``_mean``) and their maximum (``_max``). Then three studies:

* **per model**: for each layer and feature, the threshold fitted on the model's ``dev`` split,
  scored on ``dev``, on the ``check`` split (other seed, depths, records) and leave-one-task-out;
* **shared**: one rule for all models. At each relative depth (the layer ``floor(d * L)``), one
  threshold fitted on every model's ``dev`` rows, scored per model as above. A rule for an unseen model
  can only be of this kind;
* **transfer**: each model's best rule, chosen and fitted on that model alone, applied unchanged to
  every other model at the same relative depth and scored on all of its samples. Is a rule calibrated
  once on one model of a family good for a sibling whose labels it never saw?

The analysis (studies, report, plot) is in ``windowkv_mode_study.py``. It also records, per sample and
layer, where the strongest body bin lies (``peak_pos``, tokens), so that a separating layer can be
traced to what its attention looks at. ``--echo-control`` measures the QA prompts again without their
restated instruction (:func:`drop_echo`), and ``--report MAIN --echo CONTROL`` says how the best rules
call them with and without it.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import provenance
from windowkv_auto import add_sample_options, build_samples, compressed_ids, expected, parse_sample_options
from windowkv_mode_study import BIN, COLUMNS, HEAD_BINS, analyse, merge_runs

from dynamickv.replay import record_prefill

SINK_BINS = 1  # the first 8 tokens
RECENT_BINS = 32  # the last 256 tokens
QUERIES = 16  # WindowKV's localization observation window


def layer_features(scores: torch.Tensor) -> dict[str, float]:
    """Features of one layer from ``scores`` ``[kv_heads, n]`` (the observation queries' attention
    summed, per KV head, over the prompt tokens before them). See the module docstring."""
    s = scores.float().clamp_min(0)
    m = s.shape[-1] // BIN
    s = s[:, : m * BIN].reshape(s.shape[0], m, BIN).sum(-1)  # [h, m]
    end = max(SINK_BINS + 8, m - RECENT_BINS)  # short prompts keep at least 8 body bins
    body = s[:, SINK_BINS:end]
    total = s.sum(-1).clamp_min(1e-12)
    non_sink = s[:, SINK_BINS:].sum(-1).clamp_min(1e-12)
    q = body / body.sum(-1, keepdim=True).clamp_min(1e-12)
    k = q.shape[-1]
    w = min(16, k)
    windows = torch.nn.functional.avg_pool1d(q.unsqueeze(1), w, stride=1).squeeze(1) * w
    per_head = {
        "entropy": -(q * q.clamp_min(1e-12).log()).sum(-1) / math.log(k),
        "top1": q.max(-1).values,
        "win16": windows.max(-1).values,
        "body": body.sum(-1) / total,
        "far": body.sum(-1) / non_sink,
        "head": s[:, SINK_BINS:HEAD_BINS].sum(-1) / non_sink,
    }
    out = {}
    for name, v in per_head.items():
        out[f"{name}_mean"] = float(v.mean())
        out[f"{name}_max"] = float(v.max())
    out["peak_pos"] = int((body.mean(0).argmax() + SINK_BINS) * BIN)
    return out


@torch.inference_mode()
def record(model: Any, ids: torch.Tensor) -> list[dict[str, float]]:
    """:func:`layer_features` of every compressed layer of one uncompressed prefill of ``ids``."""
    rec = record_prefill(model, ids.to(model.device), observation_queries=QUERIES)
    try:
        return [
            layer_features(rec.observations[layer].scores(QUERIES, per_kv_head=True)[0])
            for layer in rec.layers
        ]
    finally:
        rec.release()


def prepare(tok: Any, length: int, args: argparse.Namespace, protocols: list[str]) -> list[dict[str, Any]]:
    """The samples of ``windowkv_auto.py`` with the token ids each protocol compresses."""
    out = []
    for set_name, split, s in build_samples(tok, length, args):
        out.append(
            {
                "set": set_name,
                "split": split,
                "task": s.task,
                "uid": f"{s.task}/{s.index}" + (f"@{s.meta['seed']}" if "seed" in s.meta else ""),
                "expected": expected(s.category),
                "ids": {p: compressed_ids(s, tok, p)[0].to(torch.int32) for p in protocols},
            }
        )
    return out


def pack(features: dict[str, float]) -> list[float]:
    """One layer's features as a list in :data:`COLUMNS` order (the saved file's compact form)."""
    return [float(f"{features[c]:.4g}") for c in COLUMNS]


def drop_echo(
    ids: torch.Tensor, head: int = 256, tail: int = 384, shortest: int = 8
) -> tuple[torch.Tensor, int]:
    """``ids`` without the prompt's echo: the longest run of its first ``head`` tokens that recurs in
    its last ``tail`` (a restated instruction), removed from the tail. ``(ids, 0)`` when no run of
    ``shortest`` tokens recurs. Returns the ids and the number of tokens removed."""
    a, b = ids[:head].tolist(), ids[-tail:].tolist()
    # the longest common run (autojunk off: frequent tokens must count like any other)
    match = difflib.SequenceMatcher(None, a, b, autojunk=False).find_longest_match(0, len(a), 0, len(b))
    if match.size < shortest:
        return ids, 0
    start = len(ids) - len(b) + match.b
    return torch.cat([ids[:start], ids[start + match.size :]]), match.size


def measure(
    model: Any, name: str, prepared: list[dict[str, Any]], protocols: list[str], echo_control: bool
) -> list[dict[str, Any]]:
    """One row per prompt and protocol: its metadata and the features of every layer (packed)."""
    rows = []
    for p in prepared:
        for protocol in protocols:
            ids = p["ids"][protocol].long()
            row = {k: v for k, v in p.items() if k != "ids"}
            if echo_control:
                ids, row["echo_tokens"] = drop_echo(ids)
            layers = [pack(f) for f in record(model, ids.unsqueeze(0))]
            rows.append(dict(row, model=name, protocol=protocol, tokens=int(ids.shape[-1]), layers=layers))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="smollm2-135m:4096,qwen2.5-coder-0.5b:8192", help="name:length,...")
    add_sample_options(ap, ruler_samples=4, multi_news=15)
    ap.add_argument("--protocols", default="raw,chat,agnostic")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    ap.add_argument("--out", default="docs/results/windowkv_mode_layers.json")
    ap.add_argument(
        "--report",
        default=None,
        help="re-analyse these saved runs (comma-separated, analysed as one) instead of measuring; "
        "the analysis is written next to the first",
    )
    ap.add_argument(
        "--echo", default=None, help="with --report: the --echo-control runs (comma-separated) to add"
    )
    ap.add_argument(
        "--echo-control",
        action="store_true",
        help="measure the QA prompts only, their restated instruction removed",
    )
    ap.add_argument("--no-analysis", action="store_true", help="only measure: analyse later with --report")
    ap.add_argument(
        "--save-prompts", default=None, help="only build the prompts and save them in this folder"
    )
    ap.add_argument(
        "--prompts", default=None, help="read the prompts --save-prompts saved instead of building them"
    )
    args = ap.parse_args()
    if args.report:
        reports, echoes = args.report.split(","), (args.echo or "").split(",")
        for given_path in [*reports, *echoes]:
            if given_path and not Path(given_path).is_file():
                ap.error(f"no such saved run: {given_path}")

        def load(paths: list[str]) -> dict[str, Any]:
            try:
                return merge_runs([json.loads(Path(path).read_text()) for path in paths if path])
            except ValueError as e:
                ap.error(str(e))

        analyse(load(reports), Path(reports[0]), load(echoes) if args.echo else None)
        return
    if args.echo:
        ap.error("--echo goes with --report")
    sample_options = ("ruler_samples", "seeds", "niah_lengths", "niah_depths", "niah_check_depths")
    skip = ("report", "echo") + ((*sample_options, "longbench_dir", "multi_news") if args.prompts else ())
    device = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu"
    given = argparse.Namespace(**{k: v for k, v in vars(args).items() if k not in skip})
    origin = provenance("windowkv_mode_layers.py", given, device)
    command = origin["command"]
    parse_sample_options(ap, args)
    protocols = [p for p in args.protocols.split(",") if p]

    from dynamickv.models import load_model, load_tokenizer

    rows: list[dict[str, Any]] = []
    prompts_command = None
    t0 = time.perf_counter()
    for spec in args.models.split(","):
        name, length = spec.rsplit(":", 1)
        if args.prompts:  # prepared elsewhere (a GPU machine without the benchmark data)
            source = Path(args.prompts) / f"{name}.pt"
            if not source.is_file():
                ap.error(f"no saved prompts for {name}: {source} is missing (make it with --save-prompts)")
            saved = torch.load(source)
            prepared, prompts_command = saved["prompts"], saved["command"]
            missing = [p for p in protocols if prepared and p not in prepared[0]["ids"]]
            if missing:
                ap.error(f"{args.prompts}/{name}.pt has no prompts for protocol {', '.join(missing)}")
            model, _ = load_model(name, progress=False, device=args.device, dtype=getattr(torch, args.dtype))
        else:
            prepared = prepare(load_tokenizer(name, progress=False), int(length), args, protocols)
            if args.save_prompts:
                Path(args.save_prompts).mkdir(parents=True, exist_ok=True)
                torch.save({"command": command, "prompts": prepared}, Path(args.save_prompts) / f"{name}.pt")
                print(f"{name}: {len(prepared)} prompts saved to {args.save_prompts}", flush=True)
                continue
            model, _ = load_model(name, progress=False, device=args.device, dtype=getattr(torch, args.dtype))
        if args.echo_control:
            prepared = [p for p in prepared if p["expected"] == "localization"]
        rows += measure(model, name, prepared, protocols, args.echo_control)
        print(
            f"{name}: {len(prepared)} samples x {len(protocols)} protocols, {time.perf_counter() - t0:.0f} s",
            flush=True,
        )
        del model
    if args.save_prompts:
        return
    import transformers

    result = {
        "meta": {
            **origin,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "prompts_command": prompts_command,
            "seconds": round(time.perf_counter() - t0, 1),
        },
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    body = ",\n".join("  " + json.dumps(r) for r in rows)  # one row per line
    out.write_text('{"meta": ' + json.dumps(result["meta"]) + ',\n "rows": [\n' + body + "\n ]\n}\n")
    if not (args.echo_control or args.no_analysis):  # the control's rows: --report MAIN --echo THIS
        analyse(json.loads(out.read_text()), out)


if __name__ == "__main__":
    main()
