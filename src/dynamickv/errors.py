"""Errors the library raises on bad input.

Every user-facing failure is a :class:`DynamicKVError`, so the CLI can print one clear line
(and no traceback) for anything the user can fix, while real bugs still surface with a traceback.
"""

from __future__ import annotations


class DynamicKVError(Exception):
    """Base class for errors caused by bad input or an unsupported setup."""


class UnknownMethodError(DynamicKVError, KeyError):
    """The method name is not in the registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class BudgetError(DynamicKVError, ValueError):
    """A budget or method parameter is out of range or unparsable."""


class UnsupportedModelError(DynamicKVError, ValueError):
    """The model's architecture or attention implementation is not supported."""


class ModelNotFoundError(DynamicKVError, FileNotFoundError):
    """The model cannot be found locally (and the hub cannot be reached)."""


class InputError(DynamicKVError, ValueError):
    """Bad input data: missing file, padding on the wrong side, an empty prompt, ..."""


class ModelFileError(DynamicKVError, ValueError):
    """A model file exists but cannot be used: invalid ``config.json``, truncated or corrupt weights,
    a file that is not the GGUF it claims to be, a model folder without tokenizer files."""


class UsageError(DynamicKVError, RuntimeError):
    """The library is used in a way it does not support: nested ``compress`` blocks on one model, a
    static cache under ``compress``, a compressed cache continued outside its block."""


class CommandInterrupted(Exception):
    """A command stopped by Ctrl-C, with what the user should know (where the partial results are).

    Not a :class:`DynamicKVError`: code that catches library errors must not swallow an interrupt. The
    CLI prints ``interrupted: <message>`` and exits with status 130.
    """
