"""LaCache (Shi et al., ICML 2025): ladder-shaped per-layer KV pattern with iterative compaction.

Facts implemented (see ../shared/reference/lacache.md):

* With L layers, span S and overlap O: a block has ``B = 1 + ceil((L - S) / (S - O))`` tokens, each layer
  keeps ``A = min(ceil(S / (S - O)), B)`` consecutive of them, so a compacted block frees ``R = B - A``.
  Layer ``i`` keeps block offsets ``[i mod (R+1), i mod (R+1) + A)`` -- an interleaved ladder that wraps
  every ``R + 1`` layers. All layers keep the same count, so the cache stays rectangular.
* A cursor starts after the sinks. When the cache holds ``n > budget`` tokens, ``ceil((n - budget) / R)``
  blocks at the cursor are compacted and the cursor moves past them. The newest L tokens are never
  compacted; when no whole block fits before them the cursor starts over at the sinks and thins the
  already-compacted region again, so density decays geometrically with age.
* The budget is a hard cap (the official code's is an average), and a large one-shot compaction is done by
  repeating the normal pass, never by the official code's wrap arithmetic.
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

    def __init__(self, budget: int, sink: int = 4, span: int = 15, overlap: int = 0) -> None:
        super().__init__(budget=budget, sink=sink)
        self.span = span
        self.overlap = overlap
        self.block = self.keep = self.frees = 0
        self.cursor = sink
        self.sweeps = 0

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
        keep: torch.Tensor | None = None  # (L, T): composed across passes, indexes the cache as it was
        while n > self.budget:
            tail = n - self.num_layers  # first protected slot
            fit = (tail - self.cursor) // self.block
            if fit < 1:  # cursor reached the protected tail: start a new sweep over older regions
                self.cursor = self.sink
                self.sweeps += 1
                fit = (tail - self.cursor) // self.block
                assert fit >= 1, "bind() guarantees one block fits after the sinks"
            blocks = min(fit, math.ceil((n - self.budget) / self.frees))
            idx = self._pass(n, self.cursor, blocks)
            keep = idx if keep is None else torch.gather(keep, 1, idx)
            n -= blocks * self.frees
            self.cursor += blocks * self.keep
        return keep

    def _pass(self, n: int, cursor: int, blocks: int) -> torch.Tensor:
        """Keep indices (L, n - blocks*R) for compacting ``blocks`` blocks starting at ``cursor``."""
        layers = self.num_layers
        starts = cursor + torch.arange(blocks) * self.block  # (blocks,)
        region = (starts[None, :, None] + self._offsets[:, None, :]).reshape(layers, -1)  # (L, blocks*A)
        head = torch.arange(cursor).expand(layers, -1)
        rest = torch.arange(cursor + blocks * self.block, n).expand(layers, -1)
        return torch.cat([head, region, rest], dim=1)

    def params(self) -> dict[str, Any]:
        return {"budget": self.budget, "sink": self.sink, "span": self.span, "overlap": self.overlap}

    def stats(self) -> dict[str, Any]:
        return {
            "compactions": self.compactions,
            "sweeps": self.sweeps,
            "cursor": self.cursor,
            "ladder": {"B": self.block, "A": self.keep, "R": self.frees},
        }
