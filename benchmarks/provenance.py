"""Where a benchmark result came from: the command that made it, the date and the machine.

Shared by the benchmark scripts that write JSON (``needle_tokens.py``, ``pooling_cost.py``,
``layer_budgets.py``, ``selection_cost.py``), so every committed result records them the same way.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
from datetime import datetime, timezone
from pathlib import Path

import torch
import transformers


def provenance(script: str, args: argparse.Namespace, device: str = "cpu") -> dict[str, str]:
    """``command`` (the script with every option given or defaulted), ``date`` (UTC) and ``machine``
    (with the torch and transformers releases: the same code can answer differently under another)."""
    options = " ".join(
        f"--{k.replace('_', '-')}" + ("" if v is True else f" {shlex.quote(str(v))}")
        for k, v in vars(args).items()
        if v is not None and v is not False  # a flag: given (``--flag``) or left out
    )
    return {
        "command": f"python benchmarks/{script} {options}",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {_device_name(device)}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, transformers {transformers.__version__}",
    }


def _device_name(device: str) -> str:
    """``device``, with the GPU's name where it is one (``cuda (NVIDIA H200)``): "cuda" alone does
    not say which machine a timing came from."""
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return device
    return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"


def write_result(out: Path, result: dict, text: str) -> None:
    """``out`` (the JSON) and the report beside it (``.txt``), then the report on stdout."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    out.with_suffix(".txt").write_text(text + "\n")
    print(text)
