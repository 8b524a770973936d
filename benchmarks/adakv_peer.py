"""kvpress's head-adaptive ``AdaKVPress`` (wrapping ``SnapKVPress``) and plain ``SnapKVPress`` as peers
for ``benchmarks/heads_gpu.py``, in their own process.

kvpress 0.5.5 pins ``transformers<5.3``: run with ``PYTHONPATH`` holding kvpress, transformers 5.2.0
and tokenizers 0.22.2. Imports no dynamickv code. One JSON line per configuration: prefill seconds,
allocator peak above the weights, cache bytes (AdaKVPress *masks* the keys it drops, so the cache
keeps every token; ``masked_fraction`` says how many slots are masked), eager decode ms/token
(median after 3 steps: each step also writes kvpress's fake keys into the masked slots).
Both presses use window 32 and kernel 7, dynamickv's SnapKV settings.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
import types

import torch


def _stub_optional_imports() -> None:
    """kvpress's ``__init__`` imports presses that need ``datasets`` / ``fire``; neither is used here."""
    for missing in ("datasets", "fire"):
        try:
            __import__(missing)
        except ImportError:
            stub = types.ModuleType(missing)
            stub.load_dataset = stub.Fire = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("stub"))
            sys.modules[missing] = stub


def _sync(cuda: bool) -> None:
    if cuda:
        torch.cuda.synchronize()


def _allocated(cuda: bool) -> int:
    return torch.cuda.memory_allocated() if cuda else 0


def _peak(cuda: bool) -> int:
    return torch.cuda.max_memory_allocated() if cuda else 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True, help="JSON of the model configuration")
    ap.add_argument("--budget", type=int, default=1024)
    ap.add_argument("--lengths", default="32768,131072")
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--max-seconds", type=float, default=120.0)
    ap.add_argument("--device", default="cuda", help="cuda (measurements) or cpu (a smoke run)")
    args = ap.parse_args()
    t_start = time.perf_counter()
    _stub_optional_imports()
    import kvpress
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache

    spec = json.loads(args.config)
    config = AutoConfig.for_model(spec.pop("model_type"), **spec)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    cuda = args.device.startswith("cuda")
    with torch.device(args.device):
        model = AutoModelForCausalLM.from_config(
            config, dtype=torch.bfloat16 if cuda else torch.float32
        ).eval()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())

    def press(name: str, ratio: float):
        snap = kvpress.SnapKVPress(compression_ratio=ratio, window_size=32, kernel_size=7)
        return kvpress.AdaKVPress(snap) if name == "adakv" else snap

    for n in [int(x) for x in args.lengths.split(",")]:
        for name in ("snapkv", "adakv"):
            row = {
                "method": f"kvpress-{name}",
                "budget": args.budget,
                "tokens": n,
                "kvpress": getattr(kvpress, "__version__", "0.5.5"),
                "transformers": transformers.__version__,
                "weights_gib": weights / 2**30,
            }
            elapsed = time.perf_counter() - t_start
            if elapsed > args.max_seconds:
                row["skipped"] = f"time guard at {elapsed:.0f} s"
                print(json.dumps(row), flush=True)
                continue
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            base = _allocated(cuda)
            ids = torch.randint(0, config.vocab_size, (1, n), device=args.device)
            p = press(name, 1 - args.budget / n)
            try:
                with torch.inference_mode():
                    _sync(cuda)
                    t0 = time.perf_counter()
                    cache = DynamicCache()
                    with p(model):
                        out = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
                    _sync(cuda)
                    row["prefill_s"] = time.perf_counter() - t0
                    row["prefill_peak_gib"] = (_peak(cuda) - base) / 2**30 if cuda else None
                    row["cache_bytes"] = sum(
                        t.numel() * t.element_size()
                        for layer in cache.layers
                        for t in (layer.keys, layer.values)
                    )
                    slots = sum(layer.keys.shape[1] * layer.keys.shape[2] for layer in cache.layers)
                    masked = sum(
                        len(m.masked_key_indices[0])
                        for m in model.modules()
                        if getattr(m, "masked_key_indices", None) is not None
                    )
                    row["masked_fraction"] = masked / slots
                    row["kept_tokens"] = slots - masked
                    tok = out.logits[:, -1:].argmax(-1)
                    del out
                    if cuda:
                        torch.cuda.reset_peak_memory_stats()
                    times = []
                    for _ in range(args.steps):
                        _sync(cuda)
                        t0 = time.perf_counter()
                        o = model(input_ids=tok, past_key_values=cache, use_cache=True)
                        tok = o.logits[:, -1:].argmax(-1)
                        _sync(cuda)
                        times.append(time.perf_counter() - t0)
                    row["decode_eager_ms"] = statistics.median(times[3:]) * 1e3
                    row["decode_peak_gib"] = (_peak(cuda) - base) / 2**30 if cuda else None
                    del cache, o
            except torch.OutOfMemoryError:
                row["oom"] = True
            for m in model.modules():  # AdaKVPress leaves its mask indices on the modules
                if hasattr(m, "masked_key_indices"):
                    m.masked_key_indices = None
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
