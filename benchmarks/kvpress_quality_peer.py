"""NVIDIA kvpress 0.5.5 answering the same prompts as a ``dynamickv eval`` run, in its own process.

kvpress pins ``transformers<5.3``, so this script runs with ``PYTHONPATH`` holding kvpress,
transformers 5.2.0, tokenizers 0.22.2 and cachetools 5.5.2, and imports no dynamickv code. It reads
the prompts ``benchmarks/quality_peer.py prepare`` wrote (token ids already split by the run's
protocol: ``head`` is compressed, ``tail`` fed after it; an empty tail means the first answer token
is the prefill's own prediction, as in the papers' code), compresses each head with every press at
every budget, decodes greedily (kvpress's pipeline loop: explicit positions after the original
length, stop at EOS), and writes one JSON line per (prompt, press, budget).

Budgets are matched to dynamickv's ``B`` (tokens kept per layer per KV head, window included):
``compression_ratio = 1 - (B + 0.25) / n`` (:func:`matched_ratio`). Peer rows made before 2026-12-01
passed ``1 - B / n``, with which kvpress kept ``B - 1`` tokens for some ``n``; ``--ratio naive`` reproduces
them. Presses, each at kvpress's defaults and where it matters at dynamickv's settings:

* ``kvpress-snapkv``: ``SnapKVPress()`` (window 64, kernel 5, average pooling);
* ``kvpress-snapkv:w32k7``: ``SnapKVPress(window_size=32, kernel_size=7)``, dynamickv's SnapKV window
  and kernel (kvpress pools by average only; ``dynamickv snapkv:pooling=avg`` is the exact match);
* ``kvpress-pyramidkv``: ``PyramidKVPress()``; it silently keeps uniform SnapKV budgets whenever
  ``B / beta < window``, so each record says whether a pyramid was built (``pyramid``);
* ``kvpress-pyramidkv:w8k7``: ``PyramidKVPress(window_size=8, kernel_size=7)``, dynamickv's window;
* ``kvpress-streamingllm``: ``StreamingLLMPress()`` (4 sinks);
* ``kvpress-adakv``: ``AdaKVPress(SnapKVPress())``, head-adaptive by masking (the full cache is held);
* ``kvpress-expected``: ``ExpectedAttentionPress()``, kvpress's own question-agnostic method.

On a text-only Gemma 3 (``Gemma3ForCausalLM``) the presses skip the sliding-window layers, as
kvpress itself does for Gemma 3 and as dynamickv does (``--sliding skip``, the default);
``--sliding compress`` keeps kvpress 0.5.5's own behaviour on that class, which compresses them too.

Usage: ``PYTHONPATH=$KVSITE python benchmarks/kvpress_quality_peer.py --model-dir DIR --prompts
prompts.jsonl --budgets 64,128,256 --out peer.jsonl [--shard 0/4]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import types
from pathlib import Path

import torch


def matched_ratio(budget: int, n: int) -> float:
    """The ``compression_ratio`` with which kvpress keeps exactly ``budget`` of ``n`` tokens.

    kvpress keeps ``int(n * (1 - ratio))`` tokens (SnapKV, StreamingLLM, AdaKV) or, where PyramidKV
    builds no pyramid, ``round(n * (1 - ratio))``. With ``ratio = 1 - B / n`` floating point makes the
    product a hair under ``B`` for some ``n``, and ``int`` then keeps ``B - 1`` (seen on Gemma 3:
    ``benchmarks/kvpress_kept.py``). A quarter token more puts the product in ``[B, B + 0.5)``, where
    both rules give ``B``. A budget of the whole prompt or more compresses nothing (ratio 0)."""
    return 1.0 - (budget + 0.25) / n if budget < n else 0.0


def naive_ratio(budget: int, n: int) -> float:
    """``1 - B / n``: the ratio of every peer run before 2026-12-01. It keeps ``B - 1`` where
    ``int`` rounds the product down; kept here so that those committed rows can be reproduced and
    set against the matched ones (``--ratio naive``)."""
    return 1.0 - budget / n if budget < n else 0.0


RATIOS = {"matched": matched_ratio, "naive": naive_ratio}


def done_records(out: Path) -> set[tuple[str, str, int | None]]:
    """The (uid, press, budget) records ``out`` already holds, so that a resumed shard skips them.

    A process stopped mid-write (a time limit) leaves half a line at the end. It is cut off here:
    appending after it would glue the next record onto it and make the file unreadable."""
    if not out.is_file():
        return set()
    text = out.read_text()
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
        out.write_text(text)
    return {
        (r["uid"], r["method"], r["budget"]) for r in map(json.loads, filter(str.strip, text.splitlines()))
    }


def _stub_optional_imports() -> None:
    """kvpress's package ``__init__`` imports presses that import ``datasets`` or ``fire`` (for
    calibration downloads or a command line, neither used here)."""
    for missing in ("datasets", "fire"):
        try:
            __import__(missing)
        except ImportError:
            stub = types.ModuleType(missing)
            stub.load_dataset = stub.Fire = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("stub"))
            sys.modules[missing] = stub


def presses(kvpress):
    """name -> factory(compression_ratio) -> press."""
    return {
        "kvpress-snapkv": lambda r: kvpress.SnapKVPress(compression_ratio=r),
        "kvpress-snapkv:w32k7": lambda r: kvpress.SnapKVPress(
            compression_ratio=r, window_size=32, kernel_size=7
        ),
        "kvpress-pyramidkv": lambda r: kvpress.PyramidKVPress(compression_ratio=r),
        "kvpress-pyramidkv:w8k7": lambda r: kvpress.PyramidKVPress(
            compression_ratio=r, window_size=8, kernel_size=7
        ),
        "kvpress-streamingllm": lambda r: kvpress.StreamingLLMPress(compression_ratio=r),
        "kvpress-adakv": lambda r: kvpress.AdaKVPress(kvpress.SnapKVPress(compression_ratio=r)),
        "kvpress-expected": lambda r: kvpress.ExpectedAttentionPress(compression_ratio=r),
    }


def pyramid_built(press, n: int) -> bool | None:
    """Whether ``PyramidKVPress`` builds a pyramid for an ``n``-token prompt (its own condition)."""
    if not hasattr(press, "beta"):
        return None
    cap = press.window_size + n * (1 - press.compression_ratio)
    lo = (cap - press.window_size) / press.beta
    hi = (cap - press.window_size) * 2 - lo
    if hi >= n - press.window_size:
        hi = n - press.window_size
        lo = (cap - press.window_size) * 2 - hi
    return bool(n >= hi >= lo >= press.window_size)


@contextlib.contextmanager
def full_attention_layers_only(press, model):
    """``press`` on the full-attention layers of a text-only Gemma 3, as kvpress does for Gemma 3.

    kvpress 0.5.5 leaves Gemma 3's sliding-window layers alone only for
    ``Gemma3ForConditionalGeneration``; on ``Gemma3ForCausalLM`` its ``press(model)`` hooks every
    layer (on two RULER 4k prompts at B = 128 it then answered nonsense). This is the body of
    kvpress's ``BasePress.__call__`` with its Gemma 3 rule applied to the text-only class too."""
    press.post_init_from_model(model)
    hooks = []
    try:
        for layer in model.model.layers:
            if layer.self_attn.is_sliding:
                continue
            layer.self_attn.rotary_emb = model.model.rotary_emb
            hooks.append(layer.self_attn.register_forward_hook(press.forward_hook, with_kwargs=True))
        yield
    finally:
        for hook in hooks:
            hook.remove()


def applied(press, model, sliding: str):
    """The context that applies ``press``: kvpress's own, or on a Gemma 3 text model with
    ``sliding="skip"``, :func:`full_attention_layers_only`."""
    if press is None:
        return contextlib.nullcontext()
    if sliding == "skip" and type(model).__name__ == "Gemma3ForCausalLM":
        return full_attention_layers_only(press, model)
    return press(model)


@torch.inference_mode()
def answer(
    model, head, tail, max_new: int, eos: set[int], press, sliding: str = "skip"
) -> tuple[list[int], list[int]]:
    """Greedy tokens after compressing ``head`` with ``press``; and the kept tokens per layer."""
    from transformers import DynamicCache

    cache = DynamicCache()
    n = head.shape[1]
    with applied(press, model, sliding):
        out = model(input_ids=head, past_key_values=cache, use_cache=True, logits_to_keep=1)
    kept = [int(layer.keys.shape[-2]) for layer in cache.layers]
    pos = n
    if tail.shape[1]:
        positions = torch.arange(n, n + tail.shape[1], device=head.device).unsqueeze(0)
        out = model(input_ids=tail, past_key_values=cache, position_ids=positions, logits_to_keep=1)
        pos += tail.shape[1]
    token = out.logits[0, -1].argmax()
    tokens = [int(token)]
    while tokens[-1] not in eos and len(tokens) < max_new:
        out = model(
            input_ids=token.view(1, 1),
            past_key_values=cache,
            position_ids=torch.tensor([[pos]], device=head.device),
        )
        pos += 1
        token = out.logits[0, -1].argmax()
        tokens.append(int(token))
    return tokens, kept


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--budgets", default="64,128,256")
    ap.add_argument("--presses", default="", help="comma-separated subset (default: all)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--shard", default="0/1", help="i/k: this process takes every k-th prompt from i")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument(
        "--ratio",
        choices=tuple(RATIOS),
        default="matched",
        help="matched: kvpress keeps exactly B (default); naive: 1 - B / n, as runs before 2026-12-01 did",
    )
    ap.add_argument(
        "--sliding",
        choices=("skip", "compress"),
        default="skip",
        help="Gemma 3 text models: skip the sliding-window layers (kvpress's rule for Gemma 3, the matched "
        "setting) or compress them too (what kvpress 0.5.5 does on Gemma3ForCausalLM)",
    )
    args = ap.parse_args()
    _stub_optional_imports()
    import kvpress
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    i, k = (int(x) for x in args.shard.split("/"))
    dtype = getattr(torch, args.dtype)
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=dtype, attn_implementation="sdpa")
    model = model.to(args.device).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    factories = presses(kvpress)
    chosen = [p for p in args.presses.split(",") if p] or list(factories)
    budgets = [int(b) for b in args.budgets.split(",")]
    prompts = [json.loads(line) for line in Path(args.prompts).read_text().splitlines() if line.strip()]
    out = Path(args.out)
    done = done_records(out)
    version = getattr(kvpress, "__version__", "0.5.5")
    with open(out, "a", encoding="utf-8") as fh:
        for p in prompts[i::k]:
            head = torch.tensor([p["head"]], device=args.device)
            tail = torch.tensor([p["tail"]], device=args.device, dtype=torch.long).view(1, -1)
            n = head.shape[1]
            configs = [("kvpress-none", None)] + [(name, b) for name in chosen for b in budgets]
            for name, b in configs:
                if (p["uid"], name, b) in done:
                    continue
                press = None if b is None else factories[name](RATIOS[args.ratio](b, n))
                t0 = time.perf_counter()
                error = None
                try:
                    tokens, kept = answer(model, head, tail, p["max_new_tokens"], eos, press, args.sliding)
                    text = tokenizer.decode(tokens, skip_special_tokens=True)
                except Exception as exc:  # a press that fails on this input: recorded, not fatal
                    tokens, kept, text, error = [], [], "", f"{type(exc).__name__}: {exc}"[:300]
                record = {
                    "uid": p["uid"],
                    "task": p["task"],
                    "method": name,
                    "budget": b,
                    "prediction": text,
                    "kept_tokens_per_layer": kept,
                    "compressed_tokens": n,
                    "compression_ratio": None if press is None else press.compression_ratio,
                    "seconds": time.perf_counter() - t0,
                    "kvpress": version,
                    "transformers": transformers.__version__,
                }
                if type(model).__name__ == "Gemma3ForCausalLM":
                    record["sliding_layers"] = args.sliding
                if press is not None and name.startswith("kvpress-pyramidkv"):
                    record["pyramid"] = pyramid_built(press, n)
                if error:
                    record["error"] = error
                fh.write(json.dumps(record) + "\n")
                fh.flush()


if __name__ == "__main__":
    main()
