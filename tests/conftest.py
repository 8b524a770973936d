"""Shared fixtures: the real small model is converted once per session (cached on disk)."""

from __future__ import annotations

import os

import pytest

# The Triton kernel of the decode step (dynamickv.splitkv) runs on the CPU through Triton's
# interpreter here; the variable is read when the kernels are defined, before any test imports them.
os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def exact_fp32():
    """CUDA matmuls in true float32 (no TF32) for the test, so GPU results can be compared exactly."""
    import torch

    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.fixture(scope="session")
def smollm2():
    from dynamickv.models import load_model

    return load_model("smollm2-135m", progress=False)
