"""``dynamickv bench``: prefill time, peak memory, cache bytes and decode latency per method.

Speed and memory do not depend on weight values, so models are randomly initialised from real
configurations. Per method and context length it measures, in one process:

* prefill seconds (compression included) and, separately, the scoring/selection seconds;
* peak memory above the weights during prefill and during decoding (CUDA allocator peaks);
* compressed cache bytes;
* decode milliseconds per token (median over steps after warm-up, synchronised timers), for the
  eager ``transformers`` loop and for dynamickv's static CUDA-graph decoder;
* the decode floor ``(weight bytes + cache bytes) / copy bandwidth`` measured on the same device,
  and each decode time as a multiple of it.

``fullkv`` here is plain ``transformers`` (no dynamickv code in the loop): the peer to beat.
NVIDIA kvpress runs in its own process (``benchmarks/kvpress_peer.py``, its own transformers).
"""

from __future__ import annotations

import gc
import json
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

import torch
import typer

CONFIGS: dict[str, dict[str, Any]] = {
    "llama-3.1-8b": dict(
        model_type="llama",
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        max_position_embeddings=1 << 20,
        rope_theta=500000.0,
    ),
    "qwen2.5-7b": dict(
        model_type="qwen2",
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152064,
        max_position_embeddings=1 << 20,
        rope_theta=1000000.0,
        use_sliding_window=False,
    ),
    "mistral-7b": dict(
        model_type="mistral",
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=32768,
        max_position_embeddings=1 << 20,
        rope_theta=1000000.0,
        sliding_window=None,
    ),
    "tiny": dict(
        model_type="llama",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=256,
        max_position_embeddings=1 << 16,
    ),
}


def build_model(name: str, device: str, dtype: torch.dtype) -> torch.nn.Module:
    """A randomly initialised model of a real configuration, directly on ``device``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = dict(CONFIGS[name])
    config = AutoConfig.for_model(spec.pop("model_type"), **spec)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def copy_bandwidth(device: str) -> float:
    """Bytes per second of a large device copy, counting bytes read and written."""
    if not device.startswith("cuda"):
        return float("nan")
    x = torch.empty(1 << 30, dtype=torch.uint8, device=device)
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(10):
        y.copy_(x)
    _sync(device)
    seconds = (time.perf_counter() - t0) / 10
    del x, y
    return 2 * (1 << 30) / seconds


def _mem(device: str) -> int:
    return torch.cuda.memory_allocated() if device.startswith("cuda") else 0


def _peak(device: str) -> int:
    return torch.cuda.max_memory_allocated() if device.startswith("cuda") else 0


def _reset(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


from .cache import cache_kwarg, output_cache  # noqa: E402


def _cache_bytes(cache) -> int:
    from .cache import cache_bytes

    return cache_bytes(cache)


@torch.inference_mode()
def measure(
    model,
    method: str,
    budget: int,
    n: int,
    steps: int,
    device: str,
    chunk: int,
    graph: bool,
    weights: int,
    eager_steps: int,
) -> dict[str, Any]:
    """One configuration; OOM is recorded, not raised."""
    from .compressor import Compressor
    from .fast import StaticDecoder, chunked_prefill

    row: dict[str, Any] = {"method": method, "budget": budget if method != "fullkv" else None, "tokens": n}
    ids = torch.randint(0, model.config.vocab_size, (1, n), device=device, generator=None)
    _reset(device)
    base = _mem(device)
    try:
        _sync(device)
        t0 = time.perf_counter()
        if method == "fullkv":
            out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
            stats = None
        else:
            comp = Compressor(model, method, budget, sync_timing=True)
            with comp, chunked_prefill(model, chunk):
                out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
            stats = comp.stats
        _sync(device)
        row["prefill_s"] = time.perf_counter() - t0
        row["prefill_peak_gib"] = (_peak(device) - base) / 2**30
        if stats is not None:
            row["selection_s"] = stats.selection_seconds
            row["kept_mean"] = sum(stats.kept_per_layer) / len(stats.kept_per_layer)
        cache = output_cache(out)
        row["cache_bytes"] = _cache_bytes(cache)
        first = out.logits[:, -1].argmax(-1, keepdim=True)
        del out
        _reset(device)
        # eager decode: the ordinary transformers loop
        times = []
        tok = first
        ctx = Compressor(model, "fullkv", 1) if method != "fullkv" else None
        if ctx is not None:
            ctx.__enter__()
        try:
            from .cache import fork_cache

            c = fork_cache(cache) if method != "fullkv" else cache
            for _ in range(eager_steps):
                _sync(device)
                t0 = time.perf_counter()
                o = model(input_ids=tok, use_cache=True, **{cache_kwarg(model): c})
                tok = o.logits[:, -1:].argmax(-1)
                _sync(device)
                times.append(time.perf_counter() - t0)
        finally:
            if ctx is not None:
                ctx.__exit__(None, None, None)
        row["decode_eager_ms"] = statistics.median(times[3:]) * 1e3
        row["decode_peak_gib"] = (_peak(device) - base) / 2**30
        del c
        if method != "fullkv":
            _reset(device)
            times: list[float] = []
            decoder = StaticDecoder(model, cache, steps + 1, graph=graph)
            decoder.generate(first[:, 0], steps + 1, timings=times)
            row["decode_static_mode"] = decoder.decoder.mode
            del decoder
            row["decode_static_ms"] = statistics.median(times[3:]) * 1e3
            row["decode_static_peak_gib"] = (_peak(device) - base) / 2**30
        del cache
    except torch.OutOfMemoryError:
        row["oom"] = True
    _reset(device)
    row["weights_gib"] = weights / 2**30
    return row


def run_bench(
    config: str,
    methods: list[str],
    budget: int,
    lengths: list[int],
    device: str,
    steps: int = 64,
    chunk: int = 8192,
    graph: bool = True,
    kvpress_path: str | None = None,
    kvpress_methods: list[str] | None = None,
    out: Path | None = None,
) -> dict[str, Any]:
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = build_model(config, device, dtype)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    bw = copy_bandwidth(device)
    # warm-up (kernels, cuBLAS, allocator) so the first measured configuration is not penalised
    for method in dict.fromkeys(["fullkv", *methods]):
        measure(model, method, min(budget, 256), min(4096, max(lengths)), 8, device, chunk, False, weights, 6)
    rows = []
    for n in lengths:
        for method in methods:
            row = measure(
                model,
                method,
                budget,
                n,
                steps,
                device,
                chunk,
                graph and device.startswith("cuda"),
                weights,
                eager_steps=min(steps, 24),
            )
            if "cache_bytes" in row and bw == bw:
                floor = (weights + row["cache_bytes"]) / bw * 1e3
                row["floor_ms"] = floor
                for k in ("decode_eager_ms", "decode_static_ms"):
                    if k in row:
                        row[k.replace("_ms", "_x_floor")] = row[k] / floor
            rows.append(row)
            print(json.dumps(row), flush=True)
    del model
    _reset(device)
    if kvpress_path:
        peer = Path(__file__).resolve().parents[2] / "benchmarks" / "kvpress_peer.py"
        cmd = [
            sys.executable,
            str(peer),
            "--config",
            json.dumps(CONFIGS[config]),
            "--budget",
            str(budget),
            "--lengths",
            ",".join(map(str, lengths)),
            "--methods",
            ",".join(kvpress_methods or []),
            "--steps",
            str(min(steps, 24)),
        ]
        env = {**__import__("os").environ, "PYTHONPATH": kvpress_path}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        for line in proc.stdout.splitlines():
            if line.startswith("{"):
                r = json.loads(line)
                if "cache_bytes" in r and bw == bw:
                    r["floor_ms"] = (weights + r["cache_bytes"]) / bw * 1e3
                    r["decode_eager_x_floor"] = r["decode_eager_ms"] / r["floor_ms"]
                rows.append(r)
                print(line, flush=True)
        if proc.returncode:
            print(proc.stderr[-3000:], file=sys.stderr)
    result = {"meta": environment(config, budget, device, None, bw, weights), "rows": rows}
    if out:
        Path(out).write_text(json.dumps(result, indent=1))
    print_table(result)
    return result


def environment(
    config: str,
    budget: int,
    device: str,
    model=None,
    bandwidth: float | None = None,
    weights: int | None = None,
) -> dict[str, Any]:
    """The run's metadata: date, device, versions, model shape, copy bandwidth, command."""
    if weights is None:
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
    bw = copy_bandwidth(device) if bandwidth is None else bandwidth
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name()
        if device.startswith("cuda")
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "config": config,
        "budget": budget,
        "copy_bandwidth_gbs": bw / 1e9,
        "weights_gib": weights / 2**30,
        "command": " ".join(sys.argv),
    }


def print_table(result: dict[str, Any]) -> None:
    cols = [
        ("method", "method", "{}"),
        ("tokens", "tokens", "{}"),
        ("prefill_s", "prefill s", "{:.2f}"),
        ("selection_s", "select s", "{:.3f}"),
        ("prefill_peak_gib", "+peak GiB", "{:.1f}"),
        ("cache_bytes", "cache MiB", "{:.0f}"),
        ("decode_eager_ms", "eager ms/tok", "{:.1f}"),
        ("decode_static_ms", "static ms/tok", "{:.2f}"),
        ("floor_ms", "floor ms", "{:.2f}"),
        ("decode_static_x_floor", "x floor", "{:.2f}"),
    ]
    print(" | ".join(h for _, h, _ in cols))
    for r in result["rows"]:
        cells = []
        for key, _, fmt in cols:
            v = r.get(key)
            if key == "cache_bytes" and v is not None:
                v = v / 2**20
            cells.append(
                "OOM"
                if r.get("oom") and key not in ("method", "tokens") and v is None
                else ("-" if v is None else fmt.format(v))
            )
        print(" | ".join(cells))


def register(app) -> None:
    @app.command()
    def bench(
        config: Annotated[str, typer.Option(help=f"model shape: {', '.join(CONFIGS)}")] = "tiny",
        methods: Annotated[str, typer.Option(help="comma-separated; fullkv = plain transformers")] = (
            "fullkv,snapkv,pyramidkv,dynamickv"
        ),
        budget: Annotated[int, typer.Option(help="tokens kept per layer")] = 1024,
        lengths: Annotated[str, typer.Option(help="context lengths")] = "32768,65536,131072",
        device: Annotated[str, typer.Option()] = "cuda" if torch.cuda.is_available() else "cpu",
        steps: Annotated[int, typer.Option(help="decode steps timed")] = 64,
        chunk: Annotated[int, typer.Option(help="prefill chunk for MLP/norms")] = 8192,
        graph: Annotated[bool, typer.Option(help="CUDA-graph the static decode step")] = True,
        kvpress_path: Annotated[str, typer.Option(help="PYTHONPATH holding kvpress + its transformers")] = "",
        kvpress_methods: Annotated[str, typer.Option()] = "snapkv,pyramidkv,streamingllm",
        out: Annotated[Path, typer.Option(help="JSON output")] = Path("bench.json"),
        batch: Annotated[int, typer.Option(help="rows decoded together (> 1: the serving benchmark)")] = 1,
        max_batch: Annotated[bool, typer.Option(help="find the largest batch that fits, per method")] = False,
        distinct: Annotated[int, typer.Option(help="distinct prefilled requests copied over the rows")] = 2,
        mode: Annotated[
            str, typer.Option(help="decode step: auto, plain, functional, fused, compiled")
        ] = "auto",
    ) -> None:
        """Benchmark prefill, memory and decode against plain transformers (and kvpress).

        With --batch N (N > 1) or --max-batch: batched decode throughput and time to first token."""
        from .errors import InputError
        from .serving import MODES

        if config not in CONFIGS:
            raise InputError(f"unknown config {config!r}; known: {', '.join(CONFIGS)}")
        if mode not in MODES:
            raise InputError(f"unknown decode mode {mode!r}; known: {', '.join(MODES)}")
        if batch < 1 or distinct < 1:
            raise InputError("--batch and --distinct must be at least 1")
        try:
            length_list = [int(x) for x in lengths.split(",")]
        except ValueError:
            raise InputError(f"--lengths must be comma-separated integers, got {lengths!r}") from None
        method_list = [m for m in methods.split(",") if m]
        if batch > 1 or max_batch:
            from .bench_batch import serving_bench
            from .methods import get_method

            for m in method_list:
                get_method(m)  # unknown names fail before the model is built
            serving_bench(
                config,
                method_list,
                budget,
                length_list,
                device,
                None if max_batch else batch,
                steps,
                distinct,
                mode,
                out,
            )
            return
        run_bench(
            config,
            method_list,
            budget,
            length_list,
            device,
            steps,
            chunk,
            graph,
            kvpress_path or None,
            [m for m in kvpress_methods.split(",") if m],
            out,
        )
