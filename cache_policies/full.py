"""Full cache: keep every token. The baseline whose memory grows with the stream (and eventually runs out)."""

from __future__ import annotations

import torch

from cache_policies.base import CachePolicy, param


class FullCache(CachePolicy):
    name = "full"
    needs_budget = False

    # Accepted (so every policy takes the same arguments) but ignored: nothing is evicted.
    budget: int | None = param(default=None, ignored=True)
    sink: int = param(default=0, ignored=True)

    def select(self, n: int, positions: torch.Tensor) -> torch.Tensor | None:
        return None
