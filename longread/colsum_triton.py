"""Attention column sums on CUDA with Triton: the GPU path of ``longread.attention.batched_column_sums``.

Contract: for rows ``b`` of a batch, query head ``h`` (KV head ``h // group``), a row's ``size`` queries at
slots ``length .. length + size - 1`` of its keys (causal: query ``q`` sees keys ``<= length + q``),

    out[b, h, k] = sum_q w[b, q] * softmax_k(scale * q_q . k_k)[q, k]        (float32)

exactly as the torch path computes it (which is also this kernel's test reference), for keys
``k < length + size``; the rest of ``out`` is left at zero. Two kernels, no atomics (so results do not
depend on scheduling): the first finds each query's log-sum-exp over its visible keys, the second walks
the queries of each key block and accumulates the weighted probabilities. Work is two ``Q K^T`` passes,
and nothing of size ``S x K`` ever reaches memory.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl


@triton.jit
def _lse_kernel(
    Q, K, LEN, SIZE, LSE,
    sqb, sqh, sqs, sqd, skb, skh, skk, skd, slb, slh,
    scale_log2,
    GROUP: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, HEAD_DIM: tl.constexpr,
    IEEE: tl.constexpr,
):  # fmt: skip
    qb, h, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    size = tl.load(SIZE + b)
    length = tl.load(LEN + b)
    q0 = qb * BLOCK_Q
    if q0 < size:
        offs_q = q0 + tl.arange(0, BLOCK_Q)
        offs_d = tl.arange(0, HEAD_DIM)
        q = tl.load(
            Q + b * sqb + h * sqh + offs_q[:, None] * sqs + offs_d[None, :] * sqd,
            mask=offs_q[:, None] < size,
            other=0.0,
        )
        last = length + tl.minimum(offs_q, size - 1)  # (BQ,) the last key each query sees
        m_i = tl.full([BLOCK_Q], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_Q], tl.float32)
        kv = h // GROUP
        for k0 in range(0, length + tl.minimum(q0 + BLOCK_Q, size), BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k = tl.load(
                K + b * skb + kv * skh + offs_k[None, :] * skk + offs_d[:, None] * skd,
                mask=offs_k[None, :] < length + size,
                other=0.0,
            )
            if IEEE:  # noqa: SIM108 - a constexpr branch, resolved at compile time
                s = tl.dot(q, k, input_precision="ieee") * scale_log2
            else:
                s = tl.dot(q, k) * scale_log2
            s = tl.where(offs_k[None, :] <= last[:, None], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            l_i = l_i * tl.exp2(m_i - m_new) + tl.sum(tl.exp2(s - m_new[:, None]), 1)
            m_i = m_new
        tl.store(LSE + b * slb + h * slh + offs_q, m_i + tl.log2(l_i), mask=offs_q < size)


@triton.jit
def _colsum_kernel(
    Q, K, W, LSE, LEN, SIZE, OUT,
    sqb, sqh, sqs, sqd, skb, skh, skk, skd, swb, sws, slb, slh, sob, soh, sok,
    scale_log2,
    GROUP: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, HEAD_DIM: tl.constexpr,
    IEEE: tl.constexpr,
):  # fmt: skip
    kb, h, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    size = tl.load(SIZE + b)
    length = tl.load(LEN + b)
    k0 = kb * BLOCK_K
    if k0 < length + size:
        offs_k = k0 + tl.arange(0, BLOCK_K)
        offs_d = tl.arange(0, HEAD_DIM)
        kv = h // GROUP
        k = tl.load(
            K + b * skb + kv * skh + offs_k[None, :] * skk + offs_d[:, None] * skd,
            mask=offs_k[None, :] < length + size,
            other=0.0,
        )
        acc = tl.zeros([BLOCK_K], tl.float32)
        first = tl.maximum(k0 - length, 0) // BLOCK_Q * BLOCK_Q  # earlier queries see none of these keys
        for q0 in range(first, size, BLOCK_Q):
            offs_q = q0 + tl.arange(0, BLOCK_Q)
            valid = offs_q < size
            q = tl.load(
                Q + b * sqb + h * sqh + offs_q[:, None] * sqs + offs_d[None, :] * sqd,
                mask=valid[:, None],
                other=0.0,
            )
            lse = tl.load(LSE + b * slb + h * slh + offs_q, mask=valid, other=0.0)
            w = tl.load(W + b * swb + offs_q * sws, mask=valid, other=0.0)
            if IEEE:  # noqa: SIM108 - a constexpr branch, resolved at compile time
                s = tl.dot(q, k, input_precision="ieee") * scale_log2
            else:
                s = tl.dot(q, k) * scale_log2
            visible = (offs_k[None, :] <= length + offs_q[:, None]) & valid[:, None]
            p = tl.where(visible, tl.exp2(s - lse[:, None]), 0.0)
            acc += tl.sum(p * w[:, None], 0)
        tl.store(OUT + b * sob + h * soh + offs_k * sok, acc, mask=offs_k < length + size)


def column_sums_triton(
    query: torch.Tensor,
    key: torch.Tensor,
    lengths: torch.Tensor,
    sizes: torch.Tensor,
    weights: torch.Tensor,
    scale: float,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``query`` (n, Hq, S, D), ``key`` (n, H, K, D), ``lengths``/``sizes`` (n,) int32 on the device,
    ``weights`` (n, S) float32 -> ``out`` (n, Hq, K) float32 (see the module docstring)."""
    n, hq, width, dim = query.shape
    heads, keys = key.shape[1], key.shape[2]
    if dim & (dim - 1) or dim < 16:
        raise ValueError(f"head_dim={dim}: the Triton column sums need a power of two >= 16")
    if out is None:
        out = torch.zeros(n, hq, keys, device=query.device, dtype=torch.float32)
    lse = torch.empty(n, hq, width, device=query.device, dtype=torch.float32)
    block_q, block_k = (64, 64) if dim <= 128 else (32, 32)
    ieee = query.dtype == torch.float32
    scale_log2 = scale / math.log(2.0)
    group = hq // heads
    strides_qk = (*query.stride(), *key.stride())
    _lse_kernel[(triton.cdiv(width, block_q), hq, n)](
        query, key, lengths, sizes, lse, *strides_qk, *lse.stride()[:2], scale_log2,
        GROUP=group, BLOCK_Q=block_q, BLOCK_K=block_k, HEAD_DIM=dim, IEEE=ieee,
    )  # fmt: skip
    _colsum_kernel[(triton.cdiv(keys, block_k), hq, n)](
        query, key, weights, lse, lengths, sizes, out, *strides_qk, *weights.stride(), *lse.stride()[:2],
        *out.stride(), scale_log2,
        GROUP=group, BLOCK_Q=block_q, BLOCK_K=block_k, HEAD_DIM=dim, IEEE=ieee,
    )  # fmt: skip
    return out
