"""The small models of the demo and the tests: Hugging Face transformers models, randomly
initialised from a config (no download), one function per use.

Every model here is the real transformers code, tiny: hidden size 64, 2 layers, 4 heads of 16,
a 128-token vocabulary, dropout off (so training-mode runs are deterministic) and eager
attention. :func:`tiny_llama` is the demo's and the benchmark's model; :func:`tiny_model`
builds the other architectures whose norms :func:`layernorm_gpu.replace_norms` recognises
(Qwen3 with its per-head ``q_norm``/``k_norm``, Gemma3's ``1 + w`` norms, Mistral, T5's
``T5LayerNorm``, GPT-2's ``torch.nn.LayerNorm``).
"""

from __future__ import annotations

from typing import Any

import torch
import transformers

# arch -> (config class, model class) in transformers
_CLASSES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
    "t5": ("T5Config", "T5ForConditionalGeneration"),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel"),
}
ARCHS = tuple(_CLASSES)


def tiny_config(
    arch: str = "llama",
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    vocab_size: int = 128,
    **overrides: Any,
) -> transformers.PretrainedConfig:
    """The config of a tiny ``arch`` model (one of :data:`ARCHS`); ``overrides`` (config
    class arguments, e.g. ``attn_implementation="sdpa"``) replace or extend it."""
    head_dim = hidden_size // num_heads
    if arch == "t5":
        kwargs = {
            "vocab_size": vocab_size,
            "d_model": hidden_size,
            "d_kv": head_dim,
            "d_ff": 2 * hidden_size,
            "num_layers": num_layers,
            "num_heads": num_heads,
            "dropout_rate": 0.0,
            "decoder_start_token_id": 0,
        }
    elif arch == "gpt2":
        kwargs = {
            "vocab_size": vocab_size,
            "n_embd": hidden_size,
            "n_layer": num_layers,
            "n_head": num_heads,
            "n_positions": 128,
            "resid_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "attn_pdrop": 0.0,
            "bos_token_id": 0,
            "eos_token_id": 0,
        }
    else:
        kwargs = {
            "vocab_size": vocab_size,
            "hidden_size": hidden_size,
            "intermediate_size": 2 * hidden_size,
            "num_hidden_layers": num_layers,
            "num_attention_heads": num_heads,
            "num_key_value_heads": max(1, num_heads // 2),
            "max_position_embeddings": 128,
        }
        if arch != "llama":
            kwargs["head_dim"] = head_dim
        if arch == "gemma3":
            kwargs["sliding_window"] = 8
    if arch not in _CLASSES:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    config_cls = getattr(transformers, _CLASSES[arch][0])
    return config_cls(**{"attn_implementation": "eager", **kwargs, **overrides})


def tiny_model(
    arch: str = "llama", *, seed: int = 0, dtype: torch.dtype = torch.float32, **config: Any
) -> transformers.PreTrainedModel:
    """A randomly initialised tiny ``arch`` language model (``torch.manual_seed(seed)`` before
    the init), in ``dtype``, on the CPU, in training mode; ``config`` goes to
    :func:`tiny_config`."""
    cfg = tiny_config(arch, **config)
    torch.manual_seed(seed)
    model = getattr(transformers, _CLASSES[arch][1])(cfg)
    return model.to(dtype).train()


def tiny_llama(
    *, seed: int = 0, dtype: torch.dtype = torch.float32, **config: Any
) -> transformers.LlamaForCausalLM:
    """The demo's model: a tiny random Llama (:func:`tiny_model` ``("llama")``)."""
    return tiny_model("llama", seed=seed, dtype=dtype, **config)
