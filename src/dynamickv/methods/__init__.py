"""The method registry: one small class per method, looked up by name."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from ..errors import BudgetError, UnknownMethodError
from .adakv import AdaKV
from .base import KeepOp, Method, PrefillInfo
from .dynamickv import DynamicKV
from .fullkv import FullKV
from .h2o import H2O
from .pyramidkv import PyramidKV
from .snapkv import SnapKV
from .streamingllm import StreamingLLM
from .windowkv import WindowKV

METHODS: dict[str, type[Method]] = {
    cls.name: cls for cls in (FullKV, StreamingLLM, H2O, SnapKV, PyramidKV, DynamicKV, WindowKV, AdaKV)
}


def get_method(name: str | Method, **params: Any) -> Method:
    """Build a method by registry name or spec with optional parameters.

    ``get_method("snapkv", window=16)`` and ``get_method("snapkv:window=16")`` are the same method
    (see :func:`parse_method_spec`); keyword parameters override the spec's.
    """
    if isinstance(name, Method):
        if params:
            raise BudgetError("parameters cannot be given together with a method instance")
        return name
    if ":" in str(name):
        name, fixed = parse_method_spec(str(name))
        params = {**fixed, **params}
    key = str(name).strip().lower()
    if key not in METHODS:
        raise UnknownMethodError(f"unknown method {name!r}; available: {', '.join(METHODS)}")
    cls = METHODS[key]
    known = {f.name for f in fields(cls)}
    unknown = set(params) - known
    if unknown:
        raise BudgetError(f"{key}: unknown parameter(s) {sorted(unknown)}; known: {sorted(known)}")
    return cls(**params)


def _convert(value: str, default: Any, where: str) -> Any:
    """``value`` as the type of the parameter's default (strings stay strings)."""
    try:
        if isinstance(default, bool):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(value)
            return value.lower() in ("true", "1")
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
    except ValueError:
        raise BudgetError(f"{where}: {value!r} is not a {type(default).__name__}") from None
    return value


def parse_method_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"snapkv:window=8;pooling=avg"`` -> ``("snapkv", {"window": 8, "pooling": "avg"})``.

    Why: an ablation (another window, another pooling) is a configuration of the same method, and one
    string names it everywhere a method name goes: a comma-separated ``--methods`` list, ``compress``,
    a results-table row. Values take the type of the parameter's default; unknown parameters and
    invalid values are errors, raised here rather than halfway through a run.
    """
    name, _, rest = str(spec).strip().partition(":")
    key = name.strip().lower()
    if key not in METHODS:
        raise UnknownMethodError(f"unknown method {name!r}; available: {', '.join(METHODS)}")
    defaults = {f.name: f.default for f in fields(METHODS[key])}
    params: dict[str, Any] = {}
    for item in (part.strip() for part in rest.split(";")):
        if not item:
            continue
        pname, eq, value = (x.strip() for x in item.partition("="))
        if not eq or not pname or not value:
            raise BudgetError(f"method spec {spec!r}: expected name=value, got {item!r}")
        if pname not in defaults:
            raise BudgetError(f"{key}: unknown parameter {pname!r}; known: {sorted(defaults)}")
        params[pname] = _convert(value, defaults[pname], f"{key}.{pname}")
    METHODS[key](**params)  # the method's own validation of the values
    return key, params


def describe_methods() -> list[dict[str, Any]]:
    """Every registered method as plain data (``dynamickv methods --json``): name, summary, paper,
    parameters with their defaults, ``head_adaptive`` (its KV heads split each layer's budget, as
    configured by default) and ``head_adaptive_option`` (``heads=adaptive`` can be set in a spec)."""
    out = []
    for name, cls in METHODS.items():
        params = {f.name: f.default for f in fields(cls)}
        out.append(
            {
                "name": name,
                "summary": cls.summary,
                "paper": cls.paper,
                "params": params,
                "head_adaptive": params.get("heads") == "adaptive",
                "head_adaptive_option": "heads" in params,
            }
        )
    return out


def method_spec(name: str, params: dict[str, Any]) -> str:
    """The canonical spec string of ``name`` with ``params`` (inverse of :func:`parse_method_spec`)."""
    if not params:
        return name
    return name + ":" + ";".join(f"{k}={v}" for k, v in params.items())


__all__ = [
    "H2O",
    "METHODS",
    "AdaKV",
    "DynamicKV",
    "FullKV",
    "KeepOp",
    "Method",
    "PrefillInfo",
    "PyramidKV",
    "SnapKV",
    "StreamingLLM",
    "WindowKV",
    "describe_methods",
    "get_method",
    "method_spec",
    "parse_method_spec",
]
