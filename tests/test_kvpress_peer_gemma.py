"""``benchmarks/kvpress_quality_peer.py`` on a text-only Gemma 3: the press hooks the full-attention
layers only (kvpress's own Gemma 3 rule), unless ``--sliding compress`` asks for kvpress's behaviour on
that class. A stand-in press records where it is called; kvpress itself is not needed."""

from __future__ import annotations

import contextlib

import torch

from benchscripts import load
from tiny import tiny_model

peer = load("kvpress_quality_peer")


class RecordingPress:
    def __init__(self) -> None:
        self.hooked: list[int] = []
        self.own_context = False

    def post_init_from_model(self, model) -> None:
        pass

    def forward_hook(self, module, args, kwargs, output):
        self.hooked.append(module.layer_idx)
        return output

    @contextlib.contextmanager
    def __call__(self, model):  # kvpress's own context manager
        self.own_context = True
        yield


def _run(sliding: str) -> RecordingPress:
    model = tiny_model("gemma3", num_hidden_layers=4, layer_types=["sliding_attention", "full_attention"] * 2)
    press = RecordingPress()
    with peer.applied(press, model, sliding), torch.no_grad():
        model(input_ids=torch.arange(40).view(1, -1))
    return press


def test_gemma3_text_model_compresses_its_full_attention_layers_only():
    press = _run("skip")
    assert press.hooked == [1, 3] and not press.own_context


def test_sliding_compress_keeps_kvpress_own_behaviour():
    press = _run("compress")
    assert press.own_context and press.hooked == []


def test_no_press_is_no_context():
    model = tiny_model("gemma3", num_hidden_layers=2, layer_types=["sliding_attention", "full_attention"])
    assert isinstance(peer.applied(None, model, "skip"), contextlib.nullcontext)
