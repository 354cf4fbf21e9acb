"""Attention that also reports exact attention probabilities, for score-based cache policies.

Score-based policies (``CachePolicy.needs_scores``, e.g. Cascading) need, per layer, how much attention
every cached token received from the chunk's queries. This module registers attention functions with
transformers' ``AttentionInterface`` (and their mask functions with ``AttentionMaskInterface``) that

* compute the layer's output with the model's normal kernel (transformers' SDPA path, or FlashAttention on
  CUDA), so the output is exactly what the model would produce without scores; and
* when a :func:`record_scores` context is active, compute the weighted column sums of the softmax
  probabilities ``c[h, k] = sum_q w[q] * p[h, q, k]`` for every query head ``h`` and key ``k``, exactly
  (float32 softmax with the true normalizer), one ``chunk x key-block`` tile at a time, and hand them to
  the observer as ``observer.observe(layer_idx, c, n_new)`` with ``c`` of shape ``(H_q, K)``.

The query weights ``w`` come from ``observer.query_weights(S, device)`` when the observer has it (Cascading:
EMA weights), else all ones (plain column sums). When the keys fit in one block, probabilities take one pass
(one ``Q K^T``); otherwise a first pass finds each query's log-normalizer over all blocks and a second pass
forms the probabilities block by block, so memory stays ``O(H_q * S * block)`` for any cache size.

The mask is the one transformers builds for the implementation (SDPA's boolean mask) or, when transformers
skips it (no past, or a single query), the causal mask aligned to the last key, as SDPA/flash apply it.

:func:`use_score_attention` switches a model to the matching implementation; the engine does that for
policies with ``needs_scores`` and wraps each forward in :func:`record_scores`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import flash_attention_mask, sdpa_mask

#: Keys per tile of the column-sum computation: a tile holds ``H_q * S * SCORE_BLOCK`` float32 values.
SCORE_BLOCK = 2048

SDPA_NAME = "longread_sdpa"
# Our names must not contain "flash": transformers treats any such name as a flash kernel to load.
FLASH_NAMES = {"longread_fa2": "flash_attention_2", "longread_fa3": "flash_attention_3"}


class ScoreObserver(Protocol):
    def observe(self, layer: int, scores: torch.Tensor, n_new: int) -> None: ...


@dataclass
class ScoreRecorder:
    """Routes column sums to ``observer`` during one forward pass; times the work for honest accounting."""

    observer: ScoreObserver
    block: int = SCORE_BLOCK
    seconds: float = 0.0  # column sums + observer bookkeeping, summed over layers

    def weights(self, n_queries: int, device: torch.device) -> torch.Tensor:
        fn: Callable[[int, torch.device], torch.Tensor] | None = getattr(self.observer, "query_weights", None)
        if fn is None:
            return torch.ones(n_queries, device=device)
        return fn(n_queries, device)


_RECORDER: ContextVar[ScoreRecorder | None] = ContextVar("longread_score_recorder", default=None)


@contextmanager
def record_scores(observer: ScoreObserver, block: int = SCORE_BLOCK) -> Iterator[ScoreRecorder]:
    """Within this context, every layer's attention column sums go to ``observer.observe``."""
    if block < 1:
        raise ValueError(f"block={block} must be >= 1 key per tile")
    recorder = ScoreRecorder(observer, block)
    token = _RECORDER.set(recorder)
    try:
        yield recorder
    finally:
        _RECORDER.reset(token)


def column_sums(
    query: torch.Tensor,
    key: torch.Tensor,
    mask: torch.Tensor | None,
    scaling: float | None,
    weights: torch.Tensor,
    block: int = SCORE_BLOCK,
) -> torch.Tensor:
    """Exact ``sum_q w[q] softmax(q k^T * scaling + mask)[q, k]`` per query head: ``(H_q, K)`` float32.

    ``query`` (1, H_q, S, D), ``key`` (1, H_kv, K, D), query head ``h`` reading KV head ``h // (H_q/H_kv)``
    (transformers' ``repeat_kv`` layout); ``mask`` None (causal, aligned to the last key), boolean
    (True = attend) or additive float, broadcastable to (1, 1, S, K).
    """
    if query.shape[0] != 1:
        raise ValueError(f"attention scores are computed for batch 1 (one stream), not {query.shape[0]}")
    _, hq, s, d = query.shape
    hkv, k = key.shape[1], key.shape[2]
    scale = d**-0.5 if scaling is None else scaling
    # (H_kv, G*S, D): one batched matmul per KV head covers its whole GQA group without repeating keys.
    q = (query[0].float() * scale).reshape(hkv, (hq // hkv) * s, d)
    keys = key[0]
    w = weights.to(device=query.device, dtype=torch.float32)  # (S,)
    q_pos = torch.arange(s, device=query.device)[:, None] + (k - s)  # (S, 1): last query sees the last key

    def logits(k0: int, k1: int) -> torch.Tensor:
        x = torch.bmm(q, keys[:, k0:k1].float().transpose(1, 2)).view(hq, s, k1 - k0)  # (H_q, S, kb)
        if mask is None:
            visible = torch.arange(k0, k1, device=query.device)[None, :] <= q_pos  # (S, kb)
            return x.masked_fill_(~visible, float("-inf"))
        tile = mask[0, :, :, k0:k1]  # (1 or H_q, S, kb)
        if tile.dtype == torch.bool:
            return x.masked_fill_(~tile, float("-inf"))
        return x.add_(tile.float())

    if k <= block:
        p = torch.softmax(logits(0, k), dim=-1)
        return torch.matmul(w, p)  # (H_q, K)
    # Two passes: the softmax normalizer of a query depends on every key block.
    lse = torch.full((hq, s, 1), float("-inf"), device=query.device)
    for k0 in range(0, k, block):
        lse = torch.logaddexp(lse, torch.logsumexp(logits(k0, min(k0 + block, k)), dim=-1, keepdim=True))
    out = torch.empty(hq, k, device=query.device)
    for k0 in range(0, k, block):
        k1 = min(k0 + block, k)
        out[:, k0:k1] = torch.matmul(w, torch.exp(logits(k0, k1).sub_(lse)))
    return out


def _record(
    module: nn.Module, query: torch.Tensor, key: torch.Tensor, mask: Any, kwargs: dict[str, Any]
) -> None:
    recorder = _RECORDER.get()
    if recorder is None:
        return
    window = kwargs.get("sliding_window")
    if window is not None and window < key.shape[2]:
        raise NotImplementedError(
            f"attention scores with a sliding window of {window} < {key.shape[2]} cached keys are not "
            "supported; use a budget + stride within the window, or a policy that does not need scores."
        )
    # A window at least as long as the cache never masks anything (e.g. Mistral's 4096 with budget 512).
    for unsupported in ("softcap", "s_aux", "position_bias"):
        if kwargs.get(unsupported) is not None:
            raise NotImplementedError(
                f"attention scores with `{unsupported}` are not supported; use a model without it "
                "(Llama, Mistral without sliding window, Qwen2/3) or a policy that does not need scores."
            )
    layer = getattr(module, "layer_idx", None)
    if layer is None:
        raise RuntimeError(f"{type(module).__name__} has no `layer_idx`; cannot route its attention scores.")
    cuda = query.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(query.device)  # so the timing below is the score work, not earlier kernels
    t0 = time.perf_counter()
    n_new = query.shape[2]
    tensor_mask = mask if isinstance(mask, torch.Tensor) and mask.ndim == 4 else None
    weights = recorder.weights(n_new, query.device)
    sums = column_sums(query, key, tensor_mask, kwargs.get("scaling"), weights, recorder.block)
    recorder.observer.observe(int(layer), sums, n_new)
    if cuda:
        torch.cuda.synchronize(query.device)
    recorder.seconds += time.perf_counter() - t0


def sdpa_with_scores(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention (same output), plus column sums while a recorder is active."""
    out, _ = sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    _record(module, query, key, attention_mask, kwargs)
    return out, None


def _flash_with_scores(original: str) -> Callable[..., tuple[torch.Tensor, None]]:
    def forward(
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, None]:
        if attention_mask is not None:
            raise NotImplementedError("flash attention with scores supports one unpadded stream (batch 1).")
        from transformers.integrations.flash_attention import get_target_dtype
        from transformers.modeling_flash_attention_utils import (
            _flash_attention_forward,
            flash_attn_supports_top_left_mask,
        )

        # transformers' flash_attention_forward picks the kernel from module.config (now our name), so call
        # the layer below it with the original implementation's name. Layout there is (B, S, H, D).
        out = _flash_attention_forward(
            query.transpose(1, 2),
            key.transpose(1, 2),
            value.transpose(1, 2),
            None,
            query_length=query.shape[2],
            is_causal=True,
            dropout=kwargs.get("dropout", 0.0),
            softmax_scale=kwargs.get("scaling"),
            use_top_left_mask=flash_attn_supports_top_left_mask(),
            target_dtype=get_target_dtype(query, module),
            attn_implementation=original,
        )
        _record(module, query, key, None, kwargs)
        return out, None

    return forward


AttentionInterface.register(SDPA_NAME, sdpa_with_scores)
AttentionMaskInterface.register(SDPA_NAME, sdpa_mask)
for _name, _original in FLASH_NAMES.items():
    AttentionInterface.register(_name, _flash_with_scores(_original))
    AttentionMaskInterface.register(_name, flash_attention_mask)


def use_score_attention(model: Any) -> str:
    """Switch ``model`` to the score-reporting twin of its attention implementation; returns the new name."""
    current = model.config._attn_implementation
    if current == SDPA_NAME or current in FLASH_NAMES:
        return str(current)
    if current in ("sdpa", "eager"):
        # Eager has no kernel of its own worth keeping: SDPA gives the same output to float tolerance.
        target = SDPA_NAME
    else:
        flash = [name for name, original in FLASH_NAMES.items() if original == current]
        if not flash:
            raise ValueError(
                f"attention implementation {current!r} cannot report attention scores; load the model with "
                f"attn_implementation='sdpa' (or {sorted(FLASH_NAMES.values())} on CUDA)."
            )
        target = flash[0]
    model.set_attn_implementation(target)
    return target
