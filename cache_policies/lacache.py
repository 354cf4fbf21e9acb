"""LaCache (Shi et al., ICML 2025): ladder-shaped per-layer KV pattern with iterative compaction.

Facts implemented (see ../shared/reference/lacache.md):

* With L layers, span S and overlap O: a block has ``B = 1 + ceil((L - S) / (S - O))`` tokens, each layer
  keeps ``A = min(ceil(S / (S - O)), B)`` consecutive of them, so a compacted block frees ``R = B - A``.
  Layer ``i`` keeps block offsets ``[i mod (R+1), i mod (R+1) + A)`` -- an interleaved ladder that wraps
  every ``R + 1`` layers. All layers keep the same count, so the cache stays rectangular.
* The schedule is defined token by token and depends only on how many tokens have streamed, never on how
  they were chunked. A cursor starts after the sinks. After each token, while the cache holds more than
  ``budget`` tokens, one block is compacted: if the block at the cursor would reach into the newest L
  tokens, the cursor first starts over at the sinks (a new sweep, thinning the already-compacted region
  again, so density decays geometrically with age); then the layer's A offsets of the B tokens at the
  cursor are kept and the cursor advances by A. The budget is therefore a hard cap (the official code's
  is an average) and the newest L tokens are never compacted.
* A chunk of s tokens leaves exactly what s one-token steps would. ``select`` computes that without a
  per-token loop: a step's compaction always happens when the cache has just grown to ``budget + 1``, so
  the newest-L guard is the same fixed slot ``budget + 1 - L`` for every compaction, and a chunk needs
  ``ceil((n - budget) / R)`` of them. Consecutive compactions within one sweep take consecutive B-token
  blocks of the cache as it was when the run began (tokens arriving later are appended after them), so
  each run of compactions up to the next restart is one vectorized pass; a chunk costs one pass per sweep
  it touches (one, mostly; more for chunks longer than a sweep).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from cache_policies.base import CachePolicy, PolicyConfigError


def ladder_geometry(num_layers: int, span: int, overlap: int) -> tuple[int, int, int]:
    """(B, A, R): tokens per block, tokens each layer keeps of a block, tokens a block frees."""
    if not 1 <= span <= num_layers:
        raise PolicyConfigError(
            f"lacache: span={span} must be between 1 and the model's {num_layers} layers (paper: span ~ L/2)."
        )
    if not 0 <= overlap < span:
        raise PolicyConfigError(f"lacache: overlap={overlap} must satisfy 0 <= overlap < span={span}.")
    block = 1 + math.ceil((num_layers - span) / (span - overlap))
    keep = min(math.ceil(span / (span - overlap)), block)
    return block, keep, block - keep


class LaCache(CachePolicy):
    name = "lacache"

    #: S, which with O sets the ladder (see the module docstring); 1 <= S <= L (paper: about L/2), checked
    #: against the model's layers in ``bind``.
    span: int = 15
    #: O, 0 <= O < S, checked in ``bind``.
    overlap: int = 0

    def __post_init__(self) -> None:
        self.block = self.keep = self.frees = 0  # the ladder's geometry (B, A, R): set by bind
        super().__post_init__()

    def bind(self, num_layers: int, num_kv_heads: int) -> None:
        self.block, self.keep, self.frees = ladder_geometry(num_layers, self.span, self.overlap)
        if self.frees == 0:
            raise PolicyConfigError(
                f"lacache: span={self.span}, overlap={self.overlap} on {num_layers} layers gives "
                f"B={self.block}, A={self.keep}, R=0: compaction would free nothing. Use a smaller overlap "
                f"or a smaller span (e.g. span={max(1, num_layers // 2)}, overlap=0)."
            )
        assert self.budget is not None
        need = self.sink + num_layers + self.block
        if self.budget < need:
            raise PolicyConfigError(
                f"lacache: budget={self.budget} is too small for sink={self.sink} + {num_layers} protected "
                f"recent tokens + one block of {self.block}; use budget >= {need}."
            )
        # Layer i keeps offsets [i mod (R+1), i mod (R+1) + A) of every block: (L, A)
        start = torch.arange(num_layers) % (self.frees + 1)
        self._offsets = start[:, None] + torch.arange(self.keep)[None, :]
        super().bind(num_layers, num_kv_heads)

    def reset(self) -> None:
        super().reset()
        self.cursor = self.sink
        self.sweeps = 0

    def select(self, n: int, positions: torch.Tensor) -> torch.Tensor | None:
        assert self.budget is not None
        if n <= self.budget:
            return None
        self.compactions += 1
        # Block compactions the chunk's steps owe: each fires when the cache reaches budget + 1, frees R.
        due = math.ceil((n - self.budget) / self.frees)
        # A block must end before the newest L tokens *of the step compacting it* (length budget + 1).
        tail = self.budget + 1 - self.num_layers
        keep: torch.Tensor | None = None  # (L, T): composed across passes, indexes the cache as it was
        while due > 0:
            if self.cursor + self.block > tail:  # the next block would reach the protected tail: new sweep
                self.cursor = self.sink
                self.sweeps += 1
            # Compactions left in this sweep: the j-th (0-based) starts at cursor + j*A in step coordinates.
            blocks = min(due, (tail - self.block - self.cursor) // self.keep + 1)
            idx = self._pass(n, self.cursor, blocks)
            keep = idx if keep is None else torch.gather(keep, 1, idx)
            n -= blocks * self.frees
            self.cursor += blocks * self.keep
            due -= blocks
        return keep

    def _pass(self, n: int, cursor: int, blocks: int) -> torch.Tensor:
        """Keep indices (L, n - blocks*R) for compacting ``blocks`` blocks starting at ``cursor``."""
        layers = self.num_layers
        starts = cursor + torch.arange(blocks) * self.block  # (blocks,)
        region = (starts[None, :, None] + self._offsets[:, None, :]).reshape(layers, -1)  # (L, blocks*A)
        head = torch.arange(cursor).expand(layers, -1)
        rest = torch.arange(cursor + blocks * self.block, n).expand(layers, -1)
        return torch.cat([head, region, rest], dim=1)

    def stats(self) -> dict[str, Any]:
        return {
            "compactions": self.compactions,
            "sweeps": self.sweeps,
            "cursor": self.cursor,
            "ladder": {"B": self.block, "A": self.keep, "R": self.frees},
        }
