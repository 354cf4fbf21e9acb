"""Pos-shift rotation on read, fused in one Triton kernel: the CUDA path of ``Rope.rotate_to_slots``.

Contract: keys ``x`` ``(n, H, T, D)`` were each rotated at slot ``ins[b, h, t]`` when inserted; the result
``(n, H, T, D)`` (contiguous, ``x``'s dtype) holds every key rotated to its current slot ``t`` instead,

    out[b, h, t] = R(t - ins[b, h, t]) x[b, h, t]        (half-split layout, angles in float32)

exactly as the torch path ``Rope.rotate`` computes it (its test reference): the angle is
``float32(delta) * inv_freq``, cosine and sine are libdevice's accurate ones (not the hardware
approximations, which lose digits at large angles), and the result is rounded once to ``x``'s dtype.

Why a kernel: ``rope_mode="read"`` (the bf16/fp16 default) re-rotates every cached key of every layer at
every forward. In torch that is a dozen float32 temporaries the size of the whole cache per layer; at 32
decode rows of an 8B geometry it costs more than the model's own step. Fused, it is one read and one write
of the keys.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice


# The cache length T changes at every decode step: one compiled kernel for all of them.
@triton.jit(do_not_specialize=["T"])
def _rotate_read_kernel(
    X, INS, INV, OUT,
    sxb, sxh, sxt, sxd, sib, sih, sit, sob, soh, sot,
    T,
    HALF: tl.constexpr, BLOCK_T: tl.constexpr,
):  # fmt: skip
    tb, h, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_t = tb * BLOCK_T + tl.arange(0, BLOCK_T)
    live = offs_t < T
    ins = tl.load(INS + b * sib + h * sih + offs_t * sit, mask=live, other=0)
    delta = (offs_t.to(tl.int64) - ins).to(tl.float32)  # (BT,)
    offs_d = tl.arange(0, HALF)
    angle = delta[:, None] * tl.load(INV + offs_d)[None, :]  # (BT, HALF)
    cos = libdevice.cos(angle)
    sin = libdevice.sin(angle)
    src = X + b * sxb + h * sxh + offs_t[:, None] * sxt
    x1 = tl.load(src + offs_d[None, :] * sxd, mask=live[:, None], other=0.0).to(tl.float32)
    x2 = tl.load(src + (offs_d[None, :] + HALF) * sxd, mask=live[:, None], other=0.0).to(tl.float32)
    dst = OUT + b * sob + h * soh + offs_t[:, None] * sot
    ty = OUT.dtype.element_ty
    tl.store(dst + offs_d[None, :], (x1 * cos - x2 * sin).to(ty), mask=live[:, None])
    tl.store(dst + offs_d[None, :] + HALF, (x2 * cos + x1 * sin).to(ty), mask=live[:, None])


def rotate_to_slots_triton(x: torch.Tensor, ins: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """``x`` (n, H, T, D) any strides, ``ins`` (n, H, T) int64 any strides, ``inv_freq`` (D/2,) float32 on
    ``x``'s device -> ``(n, H, T, D)`` contiguous (see the module docstring). Full-width rotary only, with
    ``D / 2`` a power of two (callers fall back to the torch path otherwise)."""
    n, heads, t, dim = x.shape
    half = dim // 2
    if inv_freq.numel() != half or half & (half - 1):
        raise ValueError(
            f"head_dim={dim}, rotary dims {2 * inv_freq.numel()}: needs full-width rotary, D/2 = 2^k"
        )
    out = torch.empty((n, heads, t, dim), dtype=x.dtype, device=x.device)
    block_t = 64 if dim <= 128 else 32
    _rotate_read_kernel[(triton.cdiv(t, block_t), heads, n)](
        x, ins, inv_freq, out, *x.stride(), *ins.stride(), *out.stride()[:3], t,
        HALF=half, BLOCK_T=block_t,
    )  # fmt: skip
    return out
