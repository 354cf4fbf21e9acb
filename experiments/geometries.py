"""Model geometries for benchmarks: real architectures written out from their published configs, built
with random weights so nothing is downloaded (speed and numerics do not depend on weight values)."""

from __future__ import annotations

from typing import Any

import torch

_LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
}

GEOMETRIES: dict[str, dict[str, Any]] = {
    "llama-3.2-1b": dict(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=131072,
        rms_norm_eps=1e-5, tie_word_embeddings=True,
        rope_parameters={**_LLAMA3_ROPE, "factor": 32.0, "original_max_position_embeddings": 8192},
    ),
    "llama-3.1-8b": dict(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=131072,
        rms_norm_eps=1e-5, tie_word_embeddings=False,
        rope_parameters={**_LLAMA3_ROPE, "factor": 8.0, "original_max_position_embeddings": 8192},
    ),
    # A 4-layer toy, for checking a benchmark on a CPU in seconds.
    "tiny": dict(
        vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    ),
    # The 8B model's 32 layers at the toy's width: on a CPU its step time is mostly per-layer host work
    # (Python, dispatch), the part of a GPU step that CUDA graphs remove.
    "tiny-32": dict(
        vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=32, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=8192,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    ),
}  # fmt: skip


def config(name: str, attn: str = "sdpa") -> Any:
    from transformers import LlamaConfig

    settings: dict[str, Any] = {**GEOMETRIES[name], "attn_implementation": attn}
    return LlamaConfig(**settings)


def random_model(name: str, dtype: torch.dtype, device: str, attn: str = "sdpa", seed: int = 0) -> Any:
    """The geometry in ``dtype`` on ``device`` with N(0, 0.02) weights, allocated there directly."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config(name, attn), dtype=dtype)
    model = model.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02, generator=gen)
    for path, module in list(model.named_modules()):  # rotary buffers: rebuild what to_empty left undefined
        if path.endswith("rotary_emb"):
            parent, _, attr = path.rpartition(".")
            setattr(model.get_submodule(parent), attr, type(module)(module.config).to(device))
    return model.eval()
