"""Attention for batched pos-shift streaming: per-row FlashAttention and exact attention column sums.

The engine runs one forward over a block of rows whose streams differ in cached length and chunk size.
Row ``b`` holds ``length[b]`` cached keys and feeds ``size[b]`` tokens padded to ``width``; query
``q < size[b]`` sees keys ``<= length[b] + q`` (causal, aligned to the row's last real key).
``forward_context`` publishes that layout for the duration of a forward; the attention functions here read
it:

* SDPA / eager need nothing more: the engine passes the matching boolean 4D mask (transformers uses a
  4D mask as given), or none when every row has the same length and a full chunk.
* FlashAttention (2, 3 or 4, through transformers' own kernel loading) takes no mask: the registered
  wrappers ``longread_fa2`` / ``longread_fa3`` / ``longread_fa4`` call the dense kernel when the block is
  uniform and otherwise pack each row's real queries and keys and call the kernel's varlen entry point
  (causal aligned bottom-right per sequence, as flash-attn >= 2.1 does).
* Score policies (``CachePolicy.needs_scores``, Cascading) need, per layer, how much attention each cached
  token received: ``c[b, h, k] = sum_q w[b, q] * p[b, h, q, k]`` over real queries, with per-row query
  weights ``w``. While a forward context carries a ``ScoreSink`` the attention functions (the SDPA twin
  ``longread_sdpa`` or the flash wrappers) compute these column sums exactly, float32, after the layer's
  output, which they leave untouched. On CUDA with Triton the sums come from two fused kernels
  (``longread.colsum_triton``: log-sum-exp, then weighted probabilities, nothing of size S x K stored);
  elsewhere from ``column_sums`` (torch, tiled by key blocks), which is also the kernel's test reference.

Timing: score work is timed with CUDA events (no host synchronization) or the CPU clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Protocol

import torch
from torch import nn
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import flash_attention_mask, sdpa_mask

#: Keys per tile of the torch column-sum path: a tile holds ``H_q * S * SCORE_BLOCK`` float32 values.
SCORE_BLOCK = 2048

SDPA_NAME = "longread_sdpa"
# Our names must not contain "flash": transformers treats any such name as a flash kernel to load.
FLASH_NAMES = {
    "longread_fa2": "flash_attention_2",
    "longread_fa3": "flash_attention_3",
    "longread_fa4": "flash_attention_4",
}


class ScoreObserver(Protocol):
    def observe(self, layer: int, scores: torch.Tensor, n_new: int) -> None: ...


class Timer:
    """Accumulates seconds of device work without host synchronization (CUDA events), or CPU seconds."""

    def __init__(self) -> None:
        self.cpu = 0.0
        self.events: list[tuple[Any, Any]] = []

    @contextmanager
    def measure(self, device: torch.device) -> Iterator[None]:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            yield  # inside a CUDA graph capture: events cannot time it (the replay is timed as a whole)
        elif device.type == "cuda":
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            stop.record()
            self.events.append((start, stop))
        else:
            t0 = time.perf_counter()
            yield
            self.cpu += time.perf_counter() - t0

    @property
    def seconds(self) -> float:
        if self.events:
            self.events[-1][1].synchronize()
            self.cpu += sum(a.elapsed_time(b) for a, b in self.events) / 1000
            self.events.clear()
        return self.cpu


@dataclass
class ScoreSink:
    """Receives each layer's column sums ``(n, H_q, K)`` for the rows of the forward."""

    on_layer: Callable[[int, torch.Tensor], None]
    weights: torch.Tensor  # (n, S) float32 query weights, zero for padding
    block: int = SCORE_BLOCK
    timer: Timer = field(default_factory=Timer)


@dataclass
class ForwardContext:
    """The layout of the rows in the forward being run (see the module docstring)."""

    lengths: list[int]
    sizes: list[int]
    width: int
    device: torch.device
    scores: ScoreSink | None = None
    _packing: tuple[torch.Tensor, ...] | None = None
    _layout: tuple[torch.Tensor, torch.Tensor] | None = None

    def device_layout(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row lengths and sizes as int32 device tensors (sent once per forward, without a sync)."""
        if self._layout is None:
            from longread.cache import to_device

            lens = to_device(torch.tensor(self.lengths, dtype=torch.int32), self.device)
            self._layout = (lens, to_device(torch.tensor(self.sizes, dtype=torch.int32), self.device))
        return self._layout

    @property
    def uniform(self) -> bool:
        return len(set(self.lengths)) == 1 and all(s == self.width for s in self.sizes)

    def packing(self) -> tuple[torch.Tensor, ...]:
        """Indices of real queries and keys, and cumulative lengths, for varlen kernels (built once)."""
        if self._packing is None:
            from longread.cache import to_device

            spans = [n + s for n, s in zip(self.lengths, self.sizes)]
            host = (
                torch.cat([torch.full((s,), i) for i, s in enumerate(self.sizes)]),
                torch.cat([torch.arange(s) for s in self.sizes]),
                torch.cat([torch.full((k,), i) for i, k in enumerate(spans)]),
                torch.cat([torch.arange(k) for k in spans]),
                torch.tensor([0, *torch.tensor(self.sizes).cumsum(0).tolist()], dtype=torch.int32),
                torch.tensor([0, *torch.tensor(spans).cumsum(0).tolist()], dtype=torch.int32),
            )
            self._packing = tuple(to_device(t, self.device) for t in host)
        return self._packing


_CONTEXT: ContextVar[ForwardContext | None] = ContextVar("longread_forward", default=None)


@contextmanager
def forward_context(ctx: ForwardContext) -> Iterator[ForwardContext]:
    token = _CONTEXT.set(ctx)
    try:
        yield ctx
    finally:
        _CONTEXT.reset(token)


#: The weights of a chunk's queries, ``(n_queries, device) -> (n_queries,)`` float32 (``query_weights``).
QueryWeights = Callable[[int, torch.device], torch.Tensor]


@contextmanager
def record_scores(
    observer: ScoreObserver, block: int = SCORE_BLOCK, query_weights: QueryWeights | None = None
) -> Iterator[ScoreSink]:
    """Outside the engine (one stream, batch 1, keys = cache + chunk): every layer's column sums go to
    ``observer.observe(layer, sums (H_q, K), n_new)``, each query weighted by ``query_weights`` (e.g. a
    policy's ``CachePolicy.query_weights``), else by one."""
    if block < 1:
        raise ValueError(f"block={block} must be >= 1 key per tile")
    sink = ScoreSink(on_layer=lambda layer, sums: None, weights=torch.zeros(0), block=block)
    token = _OBSERVER.set((observer, sink, query_weights))
    try:
        yield sink
    finally:
        _OBSERVER.reset(token)


_OBSERVER: ContextVar[tuple[ScoreObserver, ScoreSink, QueryWeights | None] | None] = ContextVar(
    "longread_observer", default=None
)


# --------------------------------------------------------------------------------------- column sums
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
        raise ValueError(f"column_sums takes one row (batch 1), not {query.shape[0]}")
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


@cache
def _triton_column_sums() -> Callable[..., torch.Tensor] | None:
    try:
        from longread.colsum_triton import column_sums_triton
    except ImportError:  # no Triton (CPU builds of torch): the torch path serves
        return None
    return column_sums_triton


def batched_column_sums(
    query: torch.Tensor,
    key: torch.Tensor,
    lengths: list[int],
    sizes: list[int],
    weights: torch.Tensor,
    scaling: float | None,
    block: int = SCORE_BLOCK,
    use_triton: bool | None = None,
    layout: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Column sums of a block of rows, ``(n, H_q, K)`` float32; see the module docstring. Triton on CUDA
    (``use_triton=None``: when available), else one exact torch pass per row."""
    n, hq, _, dim = query.shape
    scale = dim**-0.5 if scaling is None else scaling
    kernel = _triton_column_sums() if (use_triton is not False and query.is_cuda) else None
    if use_triton and kernel is None:
        raise RuntimeError("Triton column sums need CUDA and the triton package")
    if kernel is not None and dim >= 16 and not dim & (dim - 1):
        if layout is None:
            dev = query.device
            layout = (
                torch.tensor(lengths, dtype=torch.int32, device=dev),
                torch.tensor(sizes, dtype=torch.int32, device=dev),
            )
        return kernel(query, key, *layout, weights.float().contiguous(), scale)
    out = torch.zeros(n, hq, key.shape[2], device=query.device)
    for i, (length, size) in enumerate(zip(lengths, sizes)):
        span = length + size
        out[i, :, :span] = column_sums(
            query[i : i + 1, :, :size], key[i : i + 1, :, :span], None, scale, weights[i, :size], block
        )
    return out


def _record(module: nn.Module, query: torch.Tensor, key: torch.Tensor, kwargs: dict[str, Any]) -> None:
    ctx = _CONTEXT.get()
    observed = _OBSERVER.get()
    sink = ctx.scores if ctx is not None else (observed[1] if observed is not None else None)
    if sink is None:
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
    with sink.timer.measure(query.device):
        if ctx is not None:
            sums = batched_column_sums(
                query, key, ctx.lengths, ctx.sizes, sink.weights, kwargs.get("scaling"), sink.block,
                layout=ctx.device_layout(),
            )  # fmt: skip
            sink.on_layer(int(layer), sums)
        else:
            assert observed is not None
            observer, _, query_weights = observed
            n_new = query.shape[2]
            if query_weights is None:
                weights = torch.ones(n_new, device=query.device)
            else:
                weights = query_weights(n_new, query.device)
            size = [n_new] * query.shape[0]
            sums = batched_column_sums(
                query, key, [key.shape[2] - n_new] * query.shape[0], size, weights.expand(len(size), -1),
                kwargs.get("scaling"), sink.block, use_triton=False,
            )  # fmt: skip
            observer.observe(int(layer), sums[0], n_new)


# --------------------------------------------------------------------------------------- attention
def sdpa_with_scores(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention (same output), plus column sums while scores are recorded."""
    out, _ = sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    _record(module, query, key, kwargs)
    return out, None


def _flash(original: str) -> Callable[..., tuple[torch.Tensor, None]]:
    """The attention function registered for flash implementation ``original``: the dense kernel for a
    uniform block of rows (or outside the engine), else the varlen kernel over the packed rows; then the
    column sums while scores are recorded."""

    def forward(
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, None]:
        ctx = _CONTEXT.get()
        common = {
            "dropout": kwargs.get("dropout", 0.0),
            "softmax_scale": kwargs.get("scaling"),
            "sliding_window": kwargs.get("sliding_window"),
            "softcap": kwargs.get("softcap"),
        }
        if ctx is None or ctx.uniform:
            if attention_mask is not None and ctx is None:
                raise NotImplementedError("longread's flash attention takes rows laid out by the engine.")
            out = _flash_dense(original, module, query, key, value, common)
        else:
            out = _flash_varlen(original, ctx, query, key, value, common)
        _record(module, query, key, kwargs)
        return out, None

    return forward


def _flash_dense(
    original: str,
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    common: dict[str, Any],
) -> torch.Tensor:
    """Rows of one length and full chunks: the dense kernel, causal aligned to the last key: (n, S, H_q, D).

    transformers' flash_attention_forward picks the kernel from module.config (now our name), so this calls
    the layer below it with the original implementation's name. Layout there is (B, S, H, D)."""
    from transformers.integrations.flash_attention import get_target_dtype
    from transformers.modeling_flash_attention_utils import (
        _flash_attention_forward,
        flash_attn_supports_top_left_mask,
    )

    return _flash_attention_forward(
        query.transpose(1, 2),
        key.transpose(1, 2),
        value.transpose(1, 2),
        None,
        query_length=query.shape[2],
        is_causal=True,
        use_top_left_mask=flash_attn_supports_top_left_mask(),
        target_dtype=get_target_dtype(query, module),
        attn_implementation=original,
        **common,
    )


def _flash_varlen(
    original: str,
    ctx: ForwardContext,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    common: dict[str, Any],
) -> torch.Tensor:
    """Rows of different lengths or chunk sizes: each row's real queries and keys packed into one varlen
    call (causal aligned bottom-right per row), unpacked to ``(n, S, H_q, D)`` with zeros for padding."""
    from transformers.modeling_flash_attention_utils import lazy_import_flash_attention

    (_, varlen, *_), (process, _) = lazy_import_flash_attention(original)
    q_rows, q_pos, k_rows, k_pos, cu_q, cu_k = ctx.packing()
    q = query.transpose(1, 2)[q_rows, q_pos]  # (sum sizes, H_q, D)
    k = key.transpose(1, 2)[k_rows, k_pos]  # (sum lengths + sizes, H, D)
    v = value.transpose(1, 2)[k_rows, k_pos]
    spans = [n + s for n, s in zip(ctx.lengths, ctx.sizes)]
    flash_kwargs = process(
        query_length=max(ctx.sizes),
        key_length=max(spans),
        is_causal=True,
        max_seqlen_q=max(ctx.sizes),
        max_seqlen_k=max(spans),
        **common,
    )
    packed = varlen(q, k, v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, **flash_kwargs)
    packed = packed[0] if isinstance(packed, tuple) else packed
    out = query.new_zeros(query.shape[0], query.shape[2], query.shape[1], query.shape[3])
    out[q_rows, q_pos] = packed.to(out.dtype)  # (n, S, H_q, D)
    return out


AttentionInterface.register(SDPA_NAME, sdpa_with_scores)
AttentionMaskInterface.register(SDPA_NAME, sdpa_mask)
for _name, _original in FLASH_NAMES.items():
    AttentionInterface.register(_name, _flash(_original))
    AttentionMaskInterface.register(_name, flash_attention_mask)


def is_flash(model: Any) -> bool:
    current = str(model.config._attn_implementation)
    return current in FLASH_NAMES or current in FLASH_NAMES.values()


def use_engine_attention(model: Any, needs_scores: bool) -> str:
    """Switch ``model`` to the attention the engine needs: the flash wrappers for any flash model (they lay
    out batched rows), the SDPA twin when scores are recorded; returns the implementation's name."""
    current = str(model.config._attn_implementation)
    if current in FLASH_NAMES or current == SDPA_NAME:
        return current
    flash = [name for name, original in FLASH_NAMES.items() if original == current]
    if flash:
        model.set_attn_implementation(flash[0])
        return flash[0]
    if not needs_scores:
        return current
    return use_score_attention(model)


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
