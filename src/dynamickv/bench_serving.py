"""Serving measurements: batched decode throughput, the largest batch that fits, time to first
token, and where a batch-1 decode step's time goes.

Used by ``dynamickv bench --batch N`` / ``--max-batch`` and by ``benchmarks/h200_serving.py``.
Decode cost does not depend on the values in the cache, so N rows may be filled with copies of a
few distinct prefilled requests (each compressed at its own length); every row still holds and
reads its own copy. Time to first token is one request's prefill (compression included) and its
first greedy token, measured alone.

``fullkv-plain`` is plain ``transformers``: one prefill's ``DynamicCache`` repeated over the rows and
the eager one-token loop (each step concatenates every layer's cache, as transformers does).
``fullkv`` is the same full cache in dynamickv's static decoder, so full KV gets its best too.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from .batch_decoder import BatchDecoder, parse_mode
from .cache import CompressedLayer, _LayerGroup, cache_bytes, cache_kwarg, output_cache

# one device, or every GPU of a spread model: clocks synchronised and memory summed over all of them
from .devices import GIB, allocated, peak_gib, release, sync


def steady_ms(times: list[float], warmup: int) -> float:
    """Median step time in ms without the first ``warmup`` steps (allocations, graph replay warm-up),
    all steps when there are no more than that."""
    return statistics.median(times[warmup:] or times) * 1e3


def is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


@torch.inference_mode()
def prefill(model, method: str, budget: int, ids: torch.Tensor, chunk: int = 8192) -> dict[str, Any]:
    """One request alone: ``{"cache", "first", "ttft_s", "prefill_peak_gib", "kept_mean", ...}``.

    ``fullkv-plain`` runs the model with no dynamickv code; every other method runs under a
    :class:`~dynamickv.compressor.Compressor` with chunked MLPs (``fullkv`` keeps every token)."""
    from .compressor import Compressor
    from .fast import chunked_prefill

    device = ids.device
    release(device)
    base = allocated(device)
    sync(device)
    t0 = time.perf_counter()
    stats = None
    if method == "fullkv-plain":
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    else:
        comp = Compressor(model, method, budget, sync_timing=True)
        with comp, chunked_prefill(model, chunk):
            out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        stats = comp.stats
    first = out.logits[:, -1].argmax(-1)
    sync(device)
    row: dict[str, Any] = {
        "ttft_s": time.perf_counter() - t0,
        "prefill_peak_gib": peak_gib(device, base),
        "cache": output_cache(out),
        "first": first,
    }
    row["cache_bytes"] = cache_bytes(row["cache"])
    if stats is not None:
        row["selection_s"] = stats.selection_seconds
        row["kept_mean"] = sum(stats.kept_per_layer) / len(stats.kept_per_layer)
        row["kept_min"], row["kept_max"] = min(stats.kept_per_layer), max(stats.kept_per_layer)
    return row


def as_compressed(cache) -> list[CompressedLayer]:
    """A plain prefill's layers viewed as compressed layers that kept every token (no copy)."""
    group = _LayerGroup()
    layers = []
    for layer in cache.layers:
        b, h, n, _ = layer.keys.shape
        pos = torch.arange(n, device=layer.keys.device).expand(b, h, n)
        layers.append(CompressedLayer(layer.keys, layer.values, pos, n, group))
    return layers


class _Layers:
    """A minimal cache: ``.layers`` is all :meth:`BatchDecoder.add` reads."""

    def __init__(self, layers) -> None:
        self.layers = layers


def fill(decoder: BatchDecoder, requests: list[dict[str, Any]]) -> None:
    """Fill every free row with copies of ``requests`` (round robin)."""
    per, extra = divmod(len(decoder.free_rows()), len(requests))
    for i, req in enumerate(requests):
        if per + (i < extra):
            decoder.add(_Layers(_layers(req)), req["first"], copies=per + (i < extra))


def _layers(request: dict[str, Any]) -> list:
    layers = request["cache"].layers
    return layers if hasattr(layers[0], "padded_prompt") else as_compressed(request["cache"])


def prompt_slots(requests: list[dict[str, Any]]) -> list[int]:
    """Per layer, the widest kept prompt among ``requests``."""
    widths = [[la.padded_prompt()[0].shape[-2] for la in _layers(r)] for r in requests]
    return [max(w) for w in zip(*widths, strict=True)]


def filled_decoder(
    model,
    requests: list[dict[str, Any]],
    rows: int,
    max_new: int,
    mode: str = "auto",
    graph: bool | None = None,
) -> BatchDecoder:
    """A :class:`BatchDecoder` for ``mode`` (``step[:attention]``) sized for ``requests``, its
    ``rows`` rows filled with copies of them (:func:`fill`); ``graph`` as the decoder's (None: its
    default)."""
    step, attention = parse_mode(mode)
    decoder = BatchDecoder(
        model, rows, max_new, prompt_slots=prompt_slots(requests), graph=graph, mode=step, attention=attention
    )
    fill(decoder, requests)
    return decoder


def decoder_rate(
    model, requests: list[dict[str, Any]], rows: int, steps: int, mode: str = "auto"
) -> dict[str, Any]:
    """Decode ``steps`` tokens per row for ``rows`` rows filled from ``requests``.

    ``mode`` is a :class:`BatchDecoder` mode, optionally with its attention kernel after a colon
    (``"compiled:flex"``).

    Returns ms per step (the steps run back to back after the first one, which captures the graph,
    and are timed together), tokens per second, the decoder's buffer bytes and peak memory."""
    device = requests[0]["first"].device
    release(device)
    base = allocated(device)
    t0 = time.perf_counter()
    decoder = filled_decoder(model, requests, rows, steps + 2, mode)
    decoder.decode(1)  # capture (graph), compile (compiled mode)
    sync(device)
    setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    decoder.decode(steps)
    sync(device)
    ms = (time.perf_counter() - t0) / steps * 1e3
    row = {
        "rows": rows,
        "mode": decoder.label,
        "graph": decoder.graph_on,
        "decode_ms": ms,
        "tokens_per_s": rows / ms * 1e3,
        "setup_s": setup,
        "buffer_gib": decoder.buffer_bytes() / GIB,
        "decode_peak_gib": peak_gib(device, base),
        "tokens": decoder.out[:, : steps + 2].cpu(),
    }
    del decoder
    release(device)
    return row


@torch.inference_mode()
def plain_rate(model, request: dict[str, Any], rows: int, steps: int) -> dict[str, Any]:
    """Plain transformers: the request's ``DynamicCache`` repeated over ``rows``, eager decode."""
    from transformers import DynamicCache

    device = request["first"].device
    release(device)
    base = allocated(device)
    cache = DynamicCache()
    for i, layer in enumerate(request["cache"].layers):
        k, v = layer.keys, layer.values
        cache.update(k.expand(rows, *k.shape[1:]).contiguous(), v.expand(rows, *v.shape[1:]).contiguous(), i)
    tok = request["first"].view(1, 1).expand(rows, 1).contiguous()
    kw = cache_kwarg(model)
    times = []
    for _ in range(steps):
        sync(device)
        t0 = time.perf_counter()
        out = model(input_ids=tok, use_cache=True, **{kw: cache})
        tok = out.logits[:, -1:].argmax(-1)
        sync(device)
        times.append(time.perf_counter() - t0)
        del out
    ms = steady_ms(times, warmup=2)
    row = {
        "rows": rows,
        "mode": "transformers-eager",
        "decode_ms": ms,
        "tokens_per_s": rows / ms * 1e3,
        "decode_peak_gib": peak_gib(device, base),
    }
    del cache
    release(device)
    return row


def rows_estimate(per_row_bytes: float, device, reserve_gib: float = 3.0) -> int:
    """Rows that fit in the device's free memory (less ``reserve_gib``) at ``per_row_bytes`` each."""
    if torch.device(device).type != "cuda":
        return 4
    release(device)
    free, _ = torch.cuda.mem_get_info()
    return max(1, int((free - reserve_gib * GIB) / per_row_bytes))


def decoder_row_bytes(model, requests: list[dict[str, Any]], steps: int) -> float:
    """Bytes one row of a :class:`BatchDecoder` takes (buffers, mask, logits and activations)."""
    config = model.config.get_text_config()
    d = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    h, size = config.num_key_value_heads, next(model.parameters()).element_size()
    slots = prompt_slots(requests)
    buffers = sum(-(-(s + steps + 2) // 16) * 16 * h * (2 * d + 1) * size for s in slots)
    activations = size * (4 * config.vocab_size + 4 * config.intermediate_size + 8 * config.hidden_size)
    return buffers + activations


def plain_row_bytes(model, request: dict[str, Any]) -> float:
    """Bytes one row of plain transformers decoding takes: its cache plus one layer's copy (the
    concatenation), logits and activations."""
    config = model.config.get_text_config()
    size = next(model.parameters()).element_size()
    per_layer = cache_bytes(request["cache"]) / len(request["cache"].layers)
    activations = size * (4 * config.vocab_size + 4 * config.intermediate_size + 8 * config.hidden_size)
    return per_layer * (len(request["cache"].layers) + 1) + activations


def search_max_batch(
    trial: Callable[[int], dict[str, Any]], estimate: int, tolerance: float = 0.02, max_trials: int = 8
) -> dict[str, Any]:
    """The largest batch ``trial`` runs without running out of memory.

    Starts at ``estimate`` (from the free memory, so usually close); steps up (4%, then 10%, 25%,
    50%, doubling) until a trial fails, or down likewise until one runs, then bisects until the
    largest success and the smallest failure are within ``tolerance``. Returns ``{"rows",
    "failed_at", "trials", "best"}`` (``best``: the largest success's row; ``rows`` 0 if none ran)."""
    steps = (0.04, 0.1, 0.25, 0.5, 1.0)
    lo, hi, best, trials = 0, None, None, []
    n, streak = max(1, estimate), 0
    while len(trials) < max_trials:
        try:
            row = trial(n)
            trials.append({"rows": n, "ok": True})
            lo, best = n, row
        except Exception as e:  # out of memory is the expected answer
            if not is_oom(e):
                raise
            trials.append({"rows": n, "ok": False})
            hi = n
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        step = steps[min(streak, len(steps) - 1)]
        streak += 1
        if hi is None:
            n = max(n + 1, int(n * (1 + step)))
        elif not lo:
            if n == 1:
                break
            n = max(1, min(n - 1, int(n * (1 - step / (1 + step)))))
        elif hi - lo <= max(1, int(lo * tolerance)):
            break
        else:
            n = (lo + hi) // 2
    return {"rows": lo, "failed_at": hi, "trials": trials, "best": best}
