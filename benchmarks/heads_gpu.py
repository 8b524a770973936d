"""Head-adaptive (Ada-KV) against uniform selection at the same B: prefill, peak memory, cache bytes,
decode ms/token; kvpress's masked ``AdaKVPress`` as the peer in the same run.

One H200 (torch 2.11+cu130, transformers 5.17), Llama-3.1-8B shape, random init, bf16::

    python benchmarks/heads_gpu.py --kvpress-path "$KVSITE" --out "$OUT"

Per context length (32k, 128k) and method (``snapkv`` vs ``adakv``, ``pyramidkv`` vs
``pyramidkv:heads=adaptive``, B = 1024) it measures, in this process:

* prefill seconds (chunked prefill, compression included; ``selection_s`` the scoring part) and the
  allocator peak above the weights;
* ``cache_bytes`` (the tensors the cache holds) against ``kept x head_dim x 2 x 2 bytes`` from the
  cache's own per-(row, head) counts (target: within 2 %), the slots a rectangular layout would have
  padded, and how unevenly heads were served (mean over layers of max/min head count);
* eager decode ms/token (``transformers`` loop inside dynamickv's attention wrapper, median of 24
  steps after 3) and the static CUDA-graph decoder's (recorded as an error when that decoder cannot
  read the cache), each as a multiple of the uniform method's at the same B (target: <= 1.2).

kvpress (0.5.5, its own transformers 5.2, ``benchmarks/adakv_peer.py`` in a subprocess with
``PYTHONPATH=--kvpress-path``) adds ``kvpress-snapkv`` and ``kvpress-adakv`` (``AdaKVPress``
wrapping ``SnapKVPress``, window 32, kernel 7): AdaKVPress masks dropped keys, so it holds the full
cache. A time guard (``--max-seconds``, default 230) skips configurations that would run past the
budget and says so. Expected: ~100 s for dynamickv rows, ~90 s for the peer on an H200. The table
is printed last; everything is written to ``$OUT/heads_gpu.json``.

CPU smoke run (no GPU numbers): ``python benchmarks/heads_gpu.py --config tiny --device cpu
--lengths 512 --budget 64 [--kvpress-path DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from dynamickv.bench import CONFIGS, build_model
from dynamickv.cache import cache_bytes, cache_kwarg, compressed_layers, fork_cache, output_cache
from dynamickv.compressor import Compressor
from dynamickv.devices import allocated, peak_gib, release, sync
from dynamickv.fast import StaticDecoder, chunked_prefill

PAIRS = {"adakv": "snapkv", "pyramidkv:heads=adaptive": "pyramidkv", "kvpress-adakv": "kvpress-snapkv"}
EAGER_STEPS, STATIC_STEPS, SKIP = 24, 48, 3


def _fresh(device: str) -> int:
    """Free what can be freed, reset the peak; the bytes allocated now (0 on CPU)."""
    release(device)
    return allocated(device)


def head_accounting(cache) -> dict[str, Any]:
    """Kept tokens from the cache's own counts, the bytes they need, and the head spread."""
    layers = compressed_layers(cache)
    kept = generated = 0
    spread = []
    for layer in layers.values():
        counts = layer.kept_counts()
        b, h = layer.batch_heads()
        kept += int(counts.sum())
        generated += b * h * layer.generated()
        spread.append(float(counts.max()) / max(float(counts.min()), 1.0))
    any_layer = next(iter(layers.values()))
    per_token = any_layer.head_dim() * 2 * any_layer.keys.element_size()
    return {
        "kept_tokens": kept,
        "expected_bytes": (kept + generated) * per_token,
        "head_spread": statistics.mean(spread),
    }


@torch.inference_mode()
def measure(model, method: str, budget: int, n: int, device: str, chunk: int) -> dict[str, Any]:
    row: dict[str, Any] = {"method": method, "budget": budget, "tokens": n}
    ids = torch.randint(0, model.config.vocab_size, (1, n), device=device)
    base = _fresh(device)
    try:
        sync(device)
        t0 = time.perf_counter()
        comp = Compressor(model, method, budget, sync_timing=True)
        with comp, chunked_prefill(model, chunk):
            out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        sync(device)
        row["prefill_s"] = time.perf_counter() - t0
        row["prefill_peak_gib"] = peak_gib(device, base)
        stats = comp.stats
        row["selection_s"] = stats.selection_seconds
        row["kept_mean"] = sum(stats.kept_per_layer) / len(stats.kept_per_layer)
        row["rectangular_padding_tokens"] = stats.rectangular_padding_tokens
        row["padding_tokens"] = stats.padding_tokens
        cache = output_cache(out)
        first = out.logits[:, -1].argmax(-1, keepdim=True)
        del out
        row["cache_bytes"] = cache_bytes(cache)
        row.update(head_accounting(cache))
        row["bytes_vs_kept"] = row["cache_bytes"] / row["expected_bytes"]
        base = _fresh(device)
        times, tok = [], first
        forked = fork_cache(cache)
        with Compressor(model, "fullkv", 1):  # the wrapper honours the ragged layers' key masks
            for _ in range(EAGER_STEPS):
                sync(device)
                t0 = time.perf_counter()
                o = model(input_ids=tok, use_cache=True, **{cache_kwarg(model): forked})
                tok = o.logits[:, -1:].argmax(-1)
                sync(device)
                times.append(time.perf_counter() - t0)
        row["decode_eager_ms"] = statistics.median(times[SKIP:]) * 1e3
        row["decode_peak_gib"] = peak_gib(device, base)
        row["bytes_after_decode_vs_kept"] = cache_bytes(forked) / head_accounting(forked)["expected_bytes"]
        del forked, o
        base = _fresh(device)
        try:
            times = []
            decoder = StaticDecoder(model, cache, STATIC_STEPS + 1, graph=device.startswith("cuda"))
            decoder.generate(first[:, 0], STATIC_STEPS + 1, timings=times)
            row["decode_static_ms"] = statistics.median(times[SKIP:]) * 1e3
            row["decode_static_peak_gib"] = peak_gib(device, base)
            del decoder
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:  # the static decoder may not read this layout (yet): say so, go on
            row["static_error"] = f"{type(exc).__name__}: {exc}"[:300]
        del cache
    except torch.OutOfMemoryError:
        row["oom"] = True
    _fresh(device)
    return row


def run_peer(args, budget: int, lengths: list[int], seconds_left: float) -> list[dict[str, Any]]:
    peer = Path(__file__).resolve().parent / "adakv_peer.py"
    cmd = [
        sys.executable,
        str(peer),
        "--config",
        json.dumps(CONFIGS[args.config]),
        "--budget",
        str(budget),
        "--lengths",
        ",".join(map(str, lengths)),
        "--steps",
        str(EAGER_STEPS),
        "--max-seconds",
        str(max(int(seconds_left), 1)),
        "--device",
        args.device,
    ]
    env = {**os.environ, "PYTHONPATH": args.kvpress_path}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=seconds_left + 60)
    except subprocess.TimeoutExpired:
        return [{"method": "kvpress", "error": "peer timed out"}]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode:
        rows.append({"method": "kvpress", "error": proc.stderr[-1500:]})
    return rows


def compare(rows: list[dict[str, Any]]) -> None:
    """Each head-adaptive row's decode as a multiple of its uniform counterpart's (same n, B)."""
    by = {(r.get("method"), r.get("tokens")): r for r in rows}
    for r in rows:
        ref = by.get((PAIRS.get(r.get("method")), r.get("tokens")))
        if ref is None:
            continue
        for key, name in (
            ("decode_eager_ms", "decode_eager_vs_uniform"),
            ("decode_static_ms", "decode_static_vs_uniform"),
            ("prefill_s", "prefill_vs_uniform"),
        ):
            if key in r and key in ref:
                r[name] = r[key] / ref[key]


def print_table(rows: list[dict[str, Any]]) -> None:
    cols = [
        ("method", "{}"),
        ("tokens", "{}"),
        ("prefill_s", "{:.2f}"),
        ("selection_s", "{:.3f}"),
        ("prefill_peak_gib", "{:.2f}"),
        ("cache_bytes", "{:.1f}"),
        ("bytes_vs_kept", "{:.4f}"),
        ("head_spread", "{:.2f}"),
        ("decode_eager_ms", "{:.2f}"),
        ("decode_eager_vs_uniform", "{:.3f}"),
        ("decode_static_ms", "{:.2f}"),
        ("decode_static_vs_uniform", "{:.3f}"),
    ]
    print(" | ".join(c if c != "cache_bytes" else "cache MiB" for c, _ in cols))
    for r in rows:
        cells = []
        for key, fmt in cols:
            v = r.get(key)
            if key == "cache_bytes" and v is not None:
                v = v / 2**20
            cells.append("-" if v is None else fmt.format(v))
        note = r.get("static_error") or r.get("error") or ("OOM" if r.get("oom") else "")
        print(" | ".join(cells) + (f"   [{note[:80]}]" if note else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="llama-3.1-8b", choices=sorted(CONFIGS))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--budget", type=int, default=1024)
    ap.add_argument("--lengths", default="32768,131072")
    ap.add_argument("--methods", default="snapkv,adakv,pyramidkv,pyramidkv:heads=adaptive")
    ap.add_argument("--chunk", type=int, default=8192)
    ap.add_argument("--kvpress-path", default=os.environ.get("KVSITE", ""))
    ap.add_argument("--max-seconds", type=float, default=230.0)
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    t_start = time.perf_counter()
    lengths = [int(x) for x in args.lengths.split(",") if x]
    methods = [m for m in args.methods.split(",") if m]
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    model = build_model(args.config, args.device, dtype)
    for method in methods:  # warm-up: kernels, cuBLAS, allocator
        measure(model, method, min(args.budget, 256), min(4096, max(lengths)), args.device, args.chunk)
    rows: list[dict[str, Any]] = []
    peer_share = 0.45 if args.kvpress_path else 0.0  # time kept for the peer
    for n in lengths:
        for method in methods:
            elapsed = time.perf_counter() - t_start
            if elapsed > args.max_seconds * (1 - peer_share):
                rows.append({"method": method, "tokens": n, "skipped": f"time guard at {elapsed:.0f} s"})
                continue
            row = measure(model, method, args.budget, n, args.device, args.chunk)
            rows.append(row)
            print(json.dumps(row), flush=True)
    del model
    _fresh(args.device)
    if args.kvpress_path:
        left = args.max_seconds - (time.perf_counter() - t_start)
        for row in run_peer(args, args.budget, lengths, left):
            rows.append(row)
            print(json.dumps(row), flush=True)
    compare(rows)
    result = {
        "meta": {
            "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
            "torch": torch.__version__,
            "transformers": __import__("transformers").__version__,
            "config": args.config,
            "budget": args.budget,
            "seconds": time.perf_counter() - t_start,
            "command": " ".join(sys.argv),
        },
        "rows": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "heads_gpu.json").write_text(json.dumps(result, indent=1))
    print_table(rows)


if __name__ == "__main__":
    main()
