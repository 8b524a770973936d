"""The evaluation grid: which method specs at which budgets, FullKV always once."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from dynamickv.budget import Budget, parse_budget
from dynamickv.errors import BudgetError, InputError
from dynamickv.eval.base import Sample

BENCHMARKS: tuple[str, ...] = ("ruler", "niah", "longbench", "longbench-e")
REFERENCE = "fullkv"
FULL = "full"  # budget key of the FullKV reference


@dataclass(frozen=True)
class Configuration:
    """One column of the grid: a method at a budget (FullKV: no budget)."""

    method: str
    budget: Budget | None

    @property
    def budget_key(self) -> str:
        return FULL if self.budget is None else str(self.budget)

    @property
    def budget_value(self) -> int | float | None:
        if self.budget is None:
            return None
        return self.budget.tokens if self.budget.tokens is not None else self.budget.ratio

    @property
    def label(self) -> str:
        return self.method if self.budget is None else f"{self.method} B={self.budget}"


def normalize_methods(methods: Iterable[str]) -> list[str]:
    """Canonical method specs (``snapkv`` or ``snapkv:window=8;pooling=avg``), FullKV first (always
    included once), duplicates removed (``snapkv:window=32`` is ``snapkv``: parameters at their default
    are dropped); unknown methods or parameters -> error."""
    from dynamickv.methods import canonical_spec

    out = [REFERENCE]
    for name in methods:
        if not str(name).strip():
            continue
        key = canonical_spec(str(name))  # raises on unknown names and parameters
        if key not in out:
            out.append(key)
    return out


def normalize_budgets(budgets: Iterable[Budget | int | float | str]) -> list[Budget]:
    out: list[Budget] = []
    for b in budgets:
        parsed = parse_budget(b)
        if parsed not in out:
            out.append(parsed)
    if not out:
        raise BudgetError("no budget given")
    return out


def configurations(
    methods: Iterable[str], budgets: Iterable[Budget | int | float | str]
) -> list[Configuration]:
    """FullKV once, then every other method at every budget."""
    names = normalize_methods(methods)
    parsed = normalize_budgets(budgets)
    grid = [Configuration(REFERENCE, None)]
    grid += [Configuration(m, b) for m in names if m != REFERENCE for b in parsed]
    return grid


def method_params(method: str, sample: Sample, windowkv_mode: str) -> dict[str, Any]:
    """Per-sample parameters of a method spec: the spec's own, and with ``windowkv_mode="category"``
    WindowKV's mode from the task category (localization for qa, aggregation otherwise) unless the
    spec fixes it."""
    from dynamickv.methods import parse_method_spec

    name, fixed = parse_method_spec(method)
    if name == "windowkv" and windowkv_mode == "category":
        return {"mode": "localization" if sample.category == "qa" else "aggregation", **fixed}
    return fixed


def _check_windowkv_mode(mode: str) -> str:
    if mode not in ("auto", "category"):
        raise InputError(f"--windowkv-mode must be auto or category, got {mode!r}")
    return mode
