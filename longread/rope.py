"""Rotary position embedding arithmetic for pos-shift caches.

Transformers rotates keys by their position before they reach the cache. Pos-shift needs a cached key to
sit at its *slot index*, which changes whenever the cache is compacted. RoPE rotations compose
(R(j) = R(j - p) R(p)), so a key rotated at position p is moved to position j by rotating it by j - p.
This module does that rotation, exactly as the model's own rotary embedding would (half-split layout,
partial rotary dims honoured), computed in float32. The result is stored in the cache's dtype, so in bf16
or fp16 every re-rotation rounds again: ``default_rope_mode`` picks the implementation that is faithful for
a cache dtype (measured in BENCHMARKS.md, "Pos-shift in bf16").
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn


def default_rope_mode(dtype: torch.dtype) -> Literal["delta", "read"]:
    """The pos-shift implementation to use for a KV cache of ``dtype`` when none is asked for.

    float32/float64: ``"delta"`` (rotate moved keys once per compaction; equal to ``"read"`` to float
    tolerance and a little faster). bf16/fp16: ``"read"``: a stored key keeps its insertion rotation and is
    rounded once per read, never accumulating; ``"delta"`` re-rounds it at every move, which measurably
    moves the next-token distribution away from a float32 run where keys move often (small strides,
    long-lived keys).
    """
    return "delta" if dtype in (torch.float32, torch.float64) else "read"


def unexpanded(t: torch.Tensor) -> torch.Tensor:
    """``t`` with every expanded (stride-0) dimension cut to size 1: same values under broadcasting."""
    return t[tuple(slice(0, 1) if st == 0 and n > 1 else slice(None) for st, n in zip(t.stride(), t.shape))]


class Rope:
    """Rotates ``(B, H, T, D)`` key tensors by per-slot position deltas."""

    def __init__(self, inv_freq: torch.Tensor) -> None:
        self.inv_freq = inv_freq.detach().float().flatten()  # (D_rot / 2,)
        self.rot_dim = 2 * self.inv_freq.numel()

    @classmethod
    def from_model(cls, model: nn.Module) -> Rope:
        """Find the model's rotary embedding (``model.model.rotary_emb`` for Llama-family models)."""
        for name, module in model.named_modules():
            if name.endswith("rotary_emb") and hasattr(module, "inv_freq"):
                return cls(module.inv_freq)
        raise ValueError(
            f"{type(model).__name__} has no rotary embedding module with `inv_freq`; longread's pos-shift "
            "cache supports RoPE models only (Llama, Mistral, Qwen2/3, Gemma)."
        )

    def rotate(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """Rotate keys ``x`` (..., T, D) by ``delta`` positions, broadcastable to ``x.shape[:-1]``: (T,) for
        all heads, (H, T) per head, (L, B, H, T) per layer and row. Dimensions along which ``delta`` is
        an expanded view (stride 0) are computed once, not once per element."""
        base = unexpanded(delta)
        inv = self.inv_freq.to(x.device)
        angle = base.to(device=x.device, dtype=torch.float32)[..., None] * inv  # (..., T, D_rot/2)
        cos, sin = angle.cos(), angle.sin()
        half = self.rot_dim // 2
        x1, x2 = x[..., :half].float(), x[..., half : self.rot_dim].float()
        # (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin): the model's rotate_half, without building it.
        parts = [(x1 * cos - x2 * sin).to(x.dtype), (x2 * cos + x1 * sin).to(x.dtype)]
        if self.rot_dim < x.shape[-1]:
            parts.append(x[..., self.rot_dim :])
        return torch.cat(parts, dim=-1)
