"""Model shapes ``dynamickv bench`` builds with random weights (plain data: the CLI lists them
without importing torch)."""

from __future__ import annotations

from typing import Any

CONFIGS: dict[str, dict[str, Any]] = {
    "llama-3.1-8b": dict(
        model_type="llama",
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        max_position_embeddings=1 << 20,
        rope_theta=500000.0,
    ),
    "qwen2.5-7b": dict(
        model_type="qwen2",
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152064,
        max_position_embeddings=1 << 20,
        rope_theta=1000000.0,
        use_sliding_window=False,
    ),
    "mistral-7b": dict(
        model_type="mistral",
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=32768,
        max_position_embeddings=1 << 20,
        rope_theta=1000000.0,
        sliding_window=None,
    ),
    "tiny": dict(
        model_type="llama",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=256,
        max_position_embeddings=1 << 16,
    ),
}

# Llama-3.1-70B: 141 GB of bf16 weights fill one H200, so its rows show what spreading layers over
# GPUs (--device auto) buys and costs
CONFIGS["llama-3.1-70b"] = {
    **CONFIGS["llama-3.1-8b"],
    "hidden_size": 8192,
    "intermediate_size": 28672,
    "num_hidden_layers": 80,
    "num_attention_heads": 64,
}

# Mistral-7B-v0.1 and a tiny model of its layout: every layer slides, so a compressed layer's kept
# tokens still leave the window as decoding goes on (the static decoder masks them by position)
CONFIGS["mistral-7b-v0.1"] = {
    **CONFIGS["mistral-7b"],
    "vocab_size": 32000,
    "max_position_embeddings": 32768,
    "rope_theta": 10000.0,
    "sliding_window": 4096,
}
CONFIGS["tiny-sliding"] = {**CONFIGS["tiny"], "model_type": "mistral", "sliding_window": 512}
