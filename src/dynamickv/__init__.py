"""dynamickv: task-adaptive, layer-adaptive KV-cache compression for Hugging Face transformers.

>>> from dynamickv import compress
>>> with compress(model, "dynamickv", budget=128):
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
from .methods import METHODS, Method, get_method

__version__ = "0.1.0"

__all__ = [
    "METHODS",
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
    "parse_budget",
]
