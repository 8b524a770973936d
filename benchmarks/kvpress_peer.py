"""NVIDIA kvpress as a peer for ``dynamickv bench``, in its own process.

kvpress 0.5.5 pins ``transformers<5.3``, so ``dynamickv bench --kvpress-path DIR`` runs this script
with ``PYTHONPATH=DIR`` holding kvpress, transformers 5.2.0 and tokenizers 0.22.2. It imports no
dynamickv code. It prints one JSON object per configuration, measured like dynamickv's rows:
prefill seconds, peak memory above the weights, cache bytes, eager decode ms/token (median).

kvpress's package ``__init__`` imports every press, two of which import ``datasets`` or ``fire``
(to download calibration data, or for a command line, neither used here); absent ones are stubbed.

``PyramidKVPress`` builds a pyramid only when ``B / beta >= window_size`` (its ``min_num``); at its
default window (64) and beta (20) that needs ``B >= 1280``, and below it silently keeps ``B`` tokens
in every layer (uniform SnapKV). So it runs here with dynamickv's PyramidKV window (8) and kernel (7)
and beta 20, which builds the pyramid at B = 1024; every row records the per-layer kept counts it
measured, and a press that kept the same count in every layer is labelled ``...-uniform``.
kvpress's pipeline compresses one context per call, so its rows are batch 1.
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
from kvpress_quality_peer import matched_ratio  # same folder; exactly B tokens per layer and head

#: PyramidKVPress at dynamickv's PyramidKV settings (window 8, kernel 7, beta 20): a real pyramid
#: whenever B / 20 >= 8 (see the module docstring).
PYRAMID = {"window_size": 8, "kernel_size": 7, "beta": 20}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True, help="JSON of the model configuration")
    ap.add_argument("--budget", type=int, default=1024)
    ap.add_argument("--lengths", default="131072")
    ap.add_argument("--methods", default="snapkv,pyramidkv,streamingllm")
    ap.add_argument("--steps", type=int, default=24)
    args = ap.parse_args()
    for missing in ("datasets", "fire"):  # imported by presses we never use
        try:
            __import__(missing)
        except ImportError:
            stub = types.ModuleType(missing)
            stub.load_dataset = stub.Fire = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("stub"))
            sys.modules[missing] = stub
    import kvpress
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache

    spec = json.loads(args.config)
    config = AutoConfig.for_model(spec.pop("model_type"), **spec)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    presses = {
        "snapkv": (kvpress.SnapKVPress, {}),
        "pyramidkv": (kvpress.PyramidKVPress, PYRAMID),
        "streamingllm": (kvpress.StreamingLLMPress, {}),
    }
    for n in [int(x) for x in args.lengths.split(",")]:
        for name in args.methods.split(","):
            row = {
                "method": f"kvpress-{name}",
                "budget": args.budget,
                "tokens": n,
                "kvpress": kvpress.__version__ if hasattr(kvpress, "__version__") else "0.5.5",
                "transformers": transformers.__version__,
            }
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            ids = torch.randint(0, config.vocab_size, (1, n), device="cuda")
            cls, options = presses[name]
            press = cls(compression_ratio=matched_ratio(args.budget, n), **options)
            row["press"] = f"{cls.__name__}({', '.join(f'{k}={v}' for k, v in options.items())})"
            try:
                with torch.inference_mode():
                    torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    cache = DynamicCache()
                    with press(model):
                        out = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
                    torch.cuda.synchronize()
                    row["prefill_s"] = time.perf_counter() - t0
                    row["prefill_peak_gib"] = (torch.cuda.max_memory_allocated() - base) / 2**30
                    row["cache_bytes"] = sum(
                        t.numel() * t.element_size()
                        for layer in cache.layers
                        for t in (layer.keys, layer.values)
                    )
                    kept = [layer.keys.shape[-2] for layer in cache.layers]
                    row["kept_mean"] = sum(kept) / len(kept)
                    row["kept_min"], row["kept_max"] = min(kept), max(kept)
                    row["kept_per_layer"] = kept
                    if name == "pyramidkv" and min(kept) == max(kept):
                        row["method"] += "-uniform"  # it fell back to SnapKV's budget in every layer
                    tok = out.logits[:, -1:].argmax(-1)
                    del out
                    torch.cuda.reset_peak_memory_stats()
                    times = []
                    for _ in range(args.steps):
                        torch.cuda.synchronize()
                        t0 = time.perf_counter()
                        o = model(input_ids=tok, past_key_values=cache, use_cache=True)
                        tok = o.logits[:, -1:].argmax(-1)
                        torch.cuda.synchronize()
                        times.append(time.perf_counter() - t0)
                    row["decode_eager_ms"] = statistics.median(times[3:]) * 1e3
                    row["batch"] = 1
                    row["tokens_per_s"] = 1e3 / row["decode_eager_ms"]
                    row["decode_peak_gib"] = (torch.cuda.max_memory_allocated() - base) / 2**30
                    del cache, o
            except torch.OutOfMemoryError:
                row["oom"] = True
            row["weights_gib"] = weights / 2**30
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
