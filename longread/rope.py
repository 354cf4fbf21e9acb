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
        """Rotate keys ``x`` (B, H, T, D) by ``delta`` positions: (T,) for all heads or (H, T) per head."""
        inv = self.inv_freq.to(x.device)
        angle = delta.to(device=x.device, dtype=torch.float32)[..., None] * inv  # (..., T, D_rot/2)
        angle = torch.cat([angle, angle], dim=-1)  # (..., T, D_rot)
        cos, sin = angle.cos(), angle.sin()
        xr = x[..., : self.rot_dim].float()
        half = self.rot_dim // 2
        rotated_half = torch.cat([-xr[..., half:], xr[..., :half]], dim=-1)
        out = xr * cos + rotated_half * sin
        if self.rot_dim == x.shape[-1]:
            return out.to(x.dtype)
        return torch.cat([out.to(x.dtype), x[..., self.rot_dim :]], dim=-1)
