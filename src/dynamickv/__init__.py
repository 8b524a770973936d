"""dynamickv: task-adaptive, layer-adaptive KV-cache compression for Hugging Face transformers.

>>> from dynamickv import compress, load_model
>>> model, tok = load_model("smollm2-135m")
>>> with compress(model, "dynamickv-auto", budget=128):
...     out = model.generate(**inputs, max_new_tokens=32)
"""

from __future__ import annotations

from .errors import (
    BudgetError,
    DynamicKVError,
    InputError,
    ModelFileError,
    ModelNotFoundError,
    UnknownMethodError,
    UnsupportedModelError,
    UsageError,
)

#: Names loaded on first use (PEP 562), so that ``import dynamickv`` and ``dynamickv --help`` do not
#: pay for torch and transformers until something needs them.
_LAZY = {
    "Budget": "budget",
    "parse_budget": "budget",
    "CompressedLayer": "cache",
    "cache_bytes": "cache",
    "kept_tokens_per_layer": "cache",
    "SUPPORTED_MODEL_TYPES": "methods",
    "Compressor": "compressor",
    "PrefillStats": "compressor",
    "compress": "compressor",
    "METHODS": "methods",
    "RECOMMENDED": "methods",
    "Method": "methods",
    "get_method": "methods",
    "load_model": "models",
    "load_tokenizer": "models",
}

__version__ = "0.1.0"


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dynamickv' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "METHODS",
    "RECOMMENDED",
    "SUPPORTED_MODEL_TYPES",
    "Budget",
    "BudgetError",
    "CompressedLayer",
    "Compressor",
    "DynamicKVError",
    "InputError",
    "Method",
    "ModelFileError",
    "ModelNotFoundError",
    "PrefillStats",
    "UnknownMethodError",
    "UnsupportedModelError",
    "UsageError",
    "cache_bytes",
    "compress",
    "get_method",
    "kept_tokens_per_layer",
    "load_model",
    "load_tokenizer",
    "parse_budget",
]
