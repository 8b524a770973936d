"""``benchmarks/provenance.py``: the command a result records, and a machine line that names the GPU."""

from __future__ import annotations

import argparse

import torch

from benchscripts import load

prov = load("provenance")


def test_command_lists_every_option_given_or_defaulted():
    args = argparse.Namespace(models="a,b", out="x y.json", flag=True, off=False, unset=None)
    got = prov.provenance("s.py", args)
    assert got["command"] == "python benchmarks/s.py --models a,b --out 'x y.json' --flag"
    assert got["machine"].split(",")[0].endswith(" cpu")


def test_machine_names_the_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    got = prov.provenance("s.py", argparse.Namespace(), "cuda")
    assert " cuda (NVIDIA H200), " in got["machine"]


def test_machine_names_the_releases():
    import transformers

    got = prov.provenance("s.py", argparse.Namespace())
    assert got["machine"].endswith(f"torch {torch.__version__}, transformers {transformers.__version__}")
