"""dynamickv: task-adaptive, layer-adaptive KV-cache compression for Hugging Face transformers.

>>> from dynamickv import compress, load_model
>>> model, tok = load_model("smollm2-135m")
>>> with compress(model, "dynamickv-robust", budget=128):
...     out = model.generate(**inputs, max_new_tokens=32)
"""

from __future__ import annotations

from .budget import Budget, parse_budget
from .cache import CompressedLayer, cache_bytes, kept_tokens_per_layer
from .compressor import SUPPORTED_MODEL_TYPES, Compressor, PrefillStats, compress
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
from .methods import METHODS, RECOMMENDED, Method, get_method

__version__ = "0.1.0"


def __getattr__(name: str):
    """``load_model`` on first use: it needs the model-file readers of the ``cli`` extra, and plain
    ``import dynamickv`` (and ``dynamickv --help``) should not pay for them."""
    if name == "load_model":
        from .models import load_model

        return load_model
    raise AttributeError(f"module 'dynamickv' has no attribute {name!r}")


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
    "parse_budget",
]
