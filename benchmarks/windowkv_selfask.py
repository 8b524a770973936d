"""WindowKV ``auto`` from the model's own reading of the request (issue 12, item 5): a negative probe.

The attention studies (``windowkv_auto.py``, ``windowkv_mode_layers.py``) found no training-free
statistic that tells the task categories apart. One training-free signal was left: ask the model
itself. No extra model, no training, no task names: the last ``--tail`` tokens of the raw prompt (the
request, as WindowKV's observation window sees it) are shown to the same model with one fixed
question, written from the categories' definitions in ``docs/methods.md`` before any result was seen:

    localization: the answer sits in one place of the text (QA);
    aggregation: it needs information gathered from many places (summaries, counting, synthetic).

The mode is the likelier of the two answer letters at the first generated position (greedy, no
threshold to fit). The margin ``log p(A) - log p(B)`` is also kept, and the report gives two more
rows:

* *calibrated*: the margin minus the model's letter bias, measured on content-free requests
  (``"N/A"``, ``""``, ``"[MASK]"``; contextual calibration, Zhao et al., "Calibrate Before Use",
  ICML 2021). Still training-free: no labels are used. Added after a first run had shown both
  models answering A to every prompt, before its own result was known;
* *best threshold in hindsight*, chosen on the labels: an upper bound on what a fitted rule on this
  signal could reach, not a rule.

Reads the prompts ``windowkv_mode_layers.py --save-prompts`` wrote (same samples as the other
studies). Usage::

    python benchmarks/windowkv_selfask.py --prompts .dev/wprompts \
        --models smollm2-135m,qwen2.5-coder-0.5b --out docs/results/windowkv_selfask.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
import windowkv_auto  # a sibling script: python puts this folder on the path

QUESTION = (
    "Here is the end of a long request about a text:\n\n<<<\n{tail}\n>>>\n\n"
    "To answer this request, does one need (A) one specific place in the text, or (B) information "
    "gathered from many places in the text? Reply with the letter A or B only."
)
SETS = windowkv_auto.SETS
#: Zhao et al. (2021)'s content-free inputs, averaged to estimate the answer letters' prior.
CONTENT_FREE = ("N/A", "", "[MASK]")


def ask(model: Any, tok: Any, tail: str) -> float:
    """log p(A) - log p(B) for the first answer token (positive: localization)."""
    messages = [{"role": "user", "content": QUESTION.format(tail=tail)}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        logits = model(input_ids=ids["input_ids"]).logits[0, -1].float()
    logp = torch.log_softmax(logits, dim=-1)
    letter = {c: tok.encode(c, add_special_tokens=False)[0] for c in ("A", "B")}
    return float(logp[letter["A"]] - logp[letter["B"]])


def agreement(rows: list[dict], threshold: float = 0.0) -> dict[str, float]:
    """Per set, in %: samples whose mode (margin > threshold: localization) is the category's
    (``windowkv_auto.agreement``'s count)."""
    chosen = [dict(r, chosen="localization" if r["margin"] > threshold else "aggregation") for r in rows]
    return {s: 100.0 * c["rate"] for s, c in windowkv_auto.agreement(chosen)["sets"].items()}


def best_threshold(rows: list[dict]) -> tuple[float, dict[str, float]]:
    """The threshold that maximises the worst set's agreement, chosen on the labels (hindsight)."""
    cuts = sorted({r["margin"] for r in rows})
    candidates = [cuts[0] - 1.0] + [(a + b) / 2 for a, b in itertools.pairwise(cuts)] + [cuts[-1] + 1.0]
    scored = [(min(agreement(rows, t).values()), t) for t in candidates]
    t = max(scored)[1]
    return t, agreement(rows, t)


def _rates(a: dict[str, float]) -> str:
    return " / ".join(f"{a[s]:.1f}" for s in SETS if s in a)


def report(rows: list[dict], biases: dict[str, float], command: str) -> str:
    lines = [
        "# WindowKV auto from the model's own reading of the request (raw prompt, last tokens)",
        f"# {command}",
        "# agreement with the categories in % (RULER / NIAH / multi_news); all-aggregation scores "
        "84.6 / 100 / 100 on RULER / NIAH / multi_news",
        "",
    ]
    for model in sorted({r["model"] for r in rows}):
        mine = [r for r in rows if r["model"] == model]
        qa = [r for r in mine if r["expected"] == "localization"]
        needles = [r for r in mine if r["task"].startswith("niah")]
        lines.append(f"{model}: {len(mine)} samples")
        bias = biases[model]
        for label, threshold in (
            ("letter chosen (training-free)", 0.0),
            (f"calibrated (content-free letter bias {bias:+.3f} subtracted, training-free)", bias),
        ):
            lines += [
                f"  {label}: {_rates(agreement(mine, threshold))}",
                f"    QA called localization: {sum(r['margin'] > threshold for r in qa)} / {len(qa)}; "
                "needle prompts called localization: "
                f"{sum(r['margin'] > threshold for r in needles)} / {len(needles)}",
            ]
        t, b = best_threshold(mine)
        lines += [f"  best threshold in hindsight ({t:+.3f}, fitted on the labels): {_rates(b)}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", required=True, help="folder of windowkv_mode_layers.py --save-prompts")
    ap.add_argument("--models", default="smollm2-135m,qwen2.5-coder-0.5b")
    ap.add_argument("--tail", type=int, default=128, help="tokens of the prompt's end shown to the model")
    ap.add_argument(
        "--out", required=True, help="JSON of per-sample margins; the report goes beside it (.txt)"
    )
    args = ap.parse_args(argv)
    if args.tail < 1:
        ap.error("--tail must be positive")
    from dynamickv.models import load_model

    command = "python benchmarks/windowkv_selfask.py " + " ".join(sys.argv[1:] if argv is None else argv)
    rows: list[dict] = []
    biases: dict[str, float] = {}
    for name in [m for m in args.models.split(",") if m]:
        source = Path(args.prompts) / f"{name}.pt"
        if not source.is_file():
            ap.error(
                f"no saved prompts for {name}: {source} is missing (windowkv_mode_layers.py --save-prompts)"
            )
        prepared = torch.load(source)["prompts"]
        model, tok = load_model(name, progress=False)
        t0 = time.perf_counter()
        biases[name] = sum(ask(model, tok, text) for text in CONTENT_FREE) / len(CONTENT_FREE)
        for p in prepared:
            tail = tok.decode(p["ids"]["raw"].reshape(-1).tolist()[-args.tail :], skip_special_tokens=True)
            rows.append(
                {k: p[k] for k in ("set", "split", "task", "uid", "expected")}
                | {"model": name, "margin": ask(model, tok, tail)}
            )
        print(f"{name}: {len(prepared)} prompts, {time.perf_counter() - t0:.0f} s", flush=True)
        del model
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"command": command, "question": QUESTION, "letter_bias": biases, "rows": rows}, indent=1)
    )
    text = report(rows, biases, command)
    out.with_suffix(".txt").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
