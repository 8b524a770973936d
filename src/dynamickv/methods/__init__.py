"""The method registry: one small class per method, looked up by name."""

from __future__ import annotations

import contextlib
import math
from dataclasses import fields
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from ..errors import BudgetError, UnknownMethodError
from .adakv import AdaKV
from .base import SUPPORTED_MODEL_TYPES, KeepOp, Method, PrefillInfo
from .cake import CAKE
from .dynamickv import DynamicKV
from .dynamickv_auto import AutoDynamicKV
from .dynamickv_preference import PreferenceDynamicKV
from .dynamickv_robust import RobustDynamicKV
from .fullkv import FullKV
from .h2o import H2O
from .pyramidkv import PyramidKV
from .snapkv import SnapKV
from .snapkv_decay import DecaySnapKV
from .snapkv_forward import ForwardSnapKV
from .streamingllm import StreamingLLM
from .windowkv import WindowKV

METHODS: dict[str, type[Method]] = {
    cls.name: cls
    for cls in (
        FullKV,
        StreamingLLM,
        H2O,
        SnapKV,
        ForwardSnapKV,
        DecaySnapKV,
        PyramidKV,
        DynamicKV,
        RobustDynamicKV,
        PreferenceDynamicKV,
        AutoDynamicKV,
        CAKE,
        WindowKV,
        AdaKV,
    )
}

#: The method to use when you have no reason to pick another: the best method on every real model
#: measured under the papers' protocol (docs/evaluation.md). Until 2026-11-29 it was
#: ``dynamickv-robust``; the allocation screen then found no layer-adaptive allocation ahead of
#: uniform budgets with the same scoring, so it became ``snapkv-forward``, then ``snapkv-decay``
#: (decay pooling, level or ahead on every set). The fourth and fifth screens (2026-11-30) found
#: ``dynamickv-preference`` ahead of it on Qwen2.5-Coder-0.5B and level on SmolLM2, and a third model
#: (Qwen2.5-Coder-1.5B, seen by no choice) confirmed the Qwen2 result, so the recommendation is
#: ``dynamickv-auto``: ``dynamickv-preference`` on Qwen2, ``snapkv-decay`` on every other family.
#: By the worst-case rule of the screens it is never behind ``snapkv-decay`` (identical on SmolLM2)
#: and has the larger mean. ``dynamickv`` stays the paper's algorithm, for reproducing it.
RECOMMENDED = AutoDynamicKV.name


def get_method(name: str | Method, **params: Any) -> Method:
    """Build a method by registry name or spec with optional parameters.

    ``get_method("snapkv", window=16)`` and ``get_method("snapkv:window=16")`` are the same method
    (see :func:`parse_method_spec`); keyword parameters override the spec's. Keyword values are
    checked against the parameter's annotation like spec values (a string is parsed as one).
    """
    if isinstance(name, Method):
        if params:
            raise BudgetError("parameters cannot be given together with a method instance")
        return name
    fixed: dict[str, Any] = {}
    if ":" in str(name):
        name, fixed = parse_method_spec(str(name))
    cls = _method_class(name)
    hints = _parameters(cls)
    checked = {p: _check_param(cls, hints, p, v) for p, v in params.items()}
    return _build(cls, {**fixed, **checked})


def parse_method_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"snapkv:window=8;pooling=avg"`` -> ``("snapkv", {"window": 8, "pooling": "avg"})``.

    Why: an ablation (another window, another pooling) is a configuration of the same method, and one
    string names it everywhere a method name goes: a comma-separated ``--methods`` list, ``compress``,
    a results-table row. Values take the type of the parameter's annotation (``windowkv:omega=8`` is
    an ``int``; ``none`` selects the default rule of a parameter whose default is ``None``); unknown
    parameters, parameters the method does not use, NaN/inf and invalid values are errors, raised here
    rather than halfway through a run.
    """
    name, _, rest = str(spec).strip().partition(":")
    cls = _method_class(name)
    hints = _parameters(cls)
    params: dict[str, Any] = {}
    for item in (part.strip() for part in rest.split(";")):
        if not item:
            continue
        pname, eq, value = (x.strip() for x in item.partition("="))
        if not eq or not pname or not value:
            raise BudgetError(f"method spec {spec!r}: expected name=value, got {item!r}")
        if pname in params:
            raise BudgetError(f"method spec {spec!r}: {pname} is given twice")
        params[pname] = _check_param(cls, hints, pname, value)
    _build(cls, params)  # the method's own validation of the values
    return cls.name, params


def _method_class(name: object) -> type[Method]:
    key = str(name).strip().lower()
    if key not in METHODS:
        raise UnknownMethodError(f"unknown method {name!r}; available: {', '.join(METHODS)}")
    return METHODS[key]


def _parameters(cls: type[Method]) -> dict[str, Any]:
    """The settable parameters of ``cls`` and their annotations (resolved: the methods' modules use
    postponed annotations), without the fields the method declares unused."""
    hints = get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls) if f.name not in cls.unused}


def _check_param(cls: type[Method], hints: dict[str, Any], pname: str, value: Any) -> Any:
    """``value`` for parameter ``pname`` of ``cls``: parsed when it is a string, type-checked otherwise."""
    if pname not in hints:
        if pname in cls.unused:
            raise BudgetError(
                f"{cls.name}: {pname!r} is not used by {cls.name}; its parameters: {sorted(hints)}"
            )
        raise BudgetError(f"{cls.name}: unknown parameter {pname!r}; known: {sorted(hints)}")
    annotation = hints[pname]
    where = f"{cls.name}.{pname}"
    if isinstance(value, str) and str not in _types(annotation):
        return _parse(value.strip(), annotation, where)
    return _typed(value, annotation, where)


def _build(cls: type[Method], params: dict[str, Any]) -> Method:
    try:
        return cls(**params)
    except TypeError as exc:  # a value of the right type the method's own checks did not expect
        raise BudgetError(f"{cls.name}: invalid parameters {params} ({exc})") from None


def _types(annotation: Any) -> tuple[Any, ...]:
    """The alternatives of an annotation: ``int | None`` -> ``(int, NoneType)``."""
    if get_origin(annotation) in (Union, UnionType):
        return get_args(annotation)
    return (annotation,)


def _type_name(annotation: Any) -> str:
    names = []
    for t in _types(annotation):
        if t is type(None):
            names.append("none")
        elif get_origin(t) is Literal:
            names.append(" or ".join(repr(c) for c in get_args(t)))
        else:
            names.append({int: "an integer", float: "a number", bool: "true or false"}.get(t, str(t)))
    return " or ".join(names)


def _parse(text: str, annotation: Any, where: str) -> Any:
    """A spec value as the parameter's annotated type: ``int``, ``float`` (finite), ``bool``, a
    ``Literal`` choice, ``str``, or ``none`` where ``None`` is allowed (the method's default rule)."""
    for t in _types(annotation):
        if t is type(None) and text.lower() == "none":
            return None
        if get_origin(t) is Literal and text in get_args(t):
            return text
        if t is bool and text.lower() in ("true", "false", "1", "0"):
            return text.lower() in ("true", "1")
        if t is int:
            with contextlib.suppress(ValueError):
                return int(text)
        if t is float:
            try:
                number = float(text)
            except ValueError:
                continue
            return _finite(number, where)
        if t is str:
            return text
    raise BudgetError(f"{where}: {text!r} is not {_type_name(annotation)}")


def _typed(value: Any, annotation: Any, where: str) -> Any:
    """A keyword value checked against the annotation (an int is accepted for a float)."""
    for t in _types(annotation):
        if t is type(None) and value is None:
            return None
        if get_origin(t) is Literal and isinstance(value, str) and value in get_args(t):
            return value
        if t is bool and isinstance(value, bool):
            return value
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return _finite(float(value), where)
        if t is str and isinstance(value, str):
            return value
    raise BudgetError(f"{where}: {value!r} is not {_type_name(annotation)}")


def _finite(value: float, where: str) -> float:
    if not math.isfinite(value):
        raise BudgetError(f"{where}: {value} is not a finite number")
    return value


def describe_methods() -> list[dict[str, Any]]:
    """Every registered method as plain data (``dynamickv methods --json``): name, summary, paper,
    parameters with their defaults, ``head_adaptive`` (its KV heads split each layer's budget, as
    configured by default), ``head_adaptive_option`` (``heads=adaptive`` can be set in a spec) and
    ``recommended`` (true for exactly one method, :data:`RECOMMENDED`)."""
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
                "recommended": name == RECOMMENDED,
            }
        )
    return out


def method_spec(name: str, params: dict[str, Any]) -> str:
    """The spec string of ``name`` with ``params`` (inverse of :func:`parse_method_spec`)."""
    if not params:
        return name
    return name + ":" + ";".join(f"{k}={v}" for k, v in params.items())


def canonical_spec(spec: str) -> str:
    """``spec`` without the parameters set to their defaults: ``snapkv:window=32`` is ``snapkv``.

    Why: equivalent specs in one ``--methods`` list are one configuration, computed once and reported
    under one name."""
    name, params = parse_method_spec(spec)
    defaults = {f.name: f.default for f in fields(METHODS[name])}
    return method_spec(name, {k: v for k, v in params.items() if k not in defaults or defaults[k] != v})


__all__ = [
    "H2O",
    "METHODS",
    "RECOMMENDED",
    "SUPPORTED_MODEL_TYPES",
    "AdaKV",
    "AutoDynamicKV",
    "DecaySnapKV",
    "DynamicKV",
    "ForwardSnapKV",
    "FullKV",
    "KeepOp",
    "Method",
    "PreferenceDynamicKV",
    "PrefillInfo",
    "PyramidKV",
    "RobustDynamicKV",
    "SnapKV",
    "StreamingLLM",
    "WindowKV",
    "canonical_spec",
    "describe_methods",
    "get_method",
    "method_spec",
    "parse_method_spec",
]
