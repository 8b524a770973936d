"""The attention wrapper's per-row, per-KV-head key mask: masking a slot equals dropping it."""

from __future__ import annotations

import pytest
import torch

from dynamickv import compress
from dynamickv.cache import CompressedLayer, cache_kwarg, compressed_layers, fork_cache
from dynamickv.key_mask import attach_key_mask
from tiny import tiny_model


class _Masked(CompressedLayer):
    """A compressed layer whose decode keys carry a fixed mask over its prompt slots."""

    slot_mask: torch.Tensor  # [b, h, prompt_kept] bool

    def update(self, key_states, value_states, *args, **kwargs):
        keys, values = super().update(key_states, value_states, *args, **kwargs)
        b, h, n, _ = keys.shape
        mask = torch.ones(b, h, n, dtype=torch.bool)
        mask[..., : self.prompt_kept] = self.slot_mask
        return attach_key_mask(keys, mask), values


def _step(model, cache, token):
    out = model(input_ids=token, use_cache=True, **{cache_kwarg(model): cache})
    return out.logits[:, -1]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_masking_slots_equals_dropping_them(attn):
    model = tiny_model("llama", attn)
    ids = torch.randint(3, 256, (2, 120), generator=torch.Generator().manual_seed(3))
    with compress(model, "snapkv", 48, window=8):
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        cache = out.past_key_values
        token = out.logits[:, -1:].argmax(-1)
        drop = torch.tensor([0, 5, 17])  # slots hidden in every row and head
        keep = torch.tensor([i for i in range(48) if i not in drop.tolist()])
        masked, dropped = fork_cache(cache), fork_cache(cache)
        for i, layer in compressed_layers(cache).items():
            m = _Masked.__new__(_Masked)
            m.__dict__.update(masked.layers[i].__dict__)
            slot = torch.ones(2, layer.keys.shape[1], 48, dtype=torch.bool)
            slot[..., drop] = False
            m.slot_mask = slot
            masked.layers[i] = m
            dropped.layers[i].keep(keep.expand(2, layer.keys.shape[1], -1).contiguous())
        ref = _step(model, dropped, token)
        got = _step(model, masked, token)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ref, _step_plain(model, cache, token), atol=1e-4)


def _step_plain(model, cache, token):
    with compress(model, "fullkv", 1):
        return _step(model, fork_cache(cache), token)


def test_padded_prompt_view_of_a_rectangular_layer():
    model = tiny_model("llama")
    ids = torch.randint(3, 256, (1, 100), generator=torch.Generator().manual_seed(4))
    with compress(model, "snapkv", 40, window=8):
        cache = model(input_ids=ids, use_cache=True).past_key_values
    layer = next(iter(compressed_layers(cache).values()))
    keys, values, valid = layer.padded_prompt()
    assert keys.shape[-2] == 40 and valid is None
    assert torch.equal(layer.kept_counts(), torch.full((1, 2), 40))
