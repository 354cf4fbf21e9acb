"""Full cache: keep every token. The baseline whose memory grows with the stream (and eventually runs out)."""

from __future__ import annotations

from typing import Any

import torch

from cache_policies.base import CachePolicy


class FullCache(CachePolicy):
    name = "full"
    needs_budget = False

    def __init__(self, budget: int | None = None, sink: int = 0) -> None:
        # The budget is accepted (so every policy takes the same arguments) but ignored: nothing is evicted.
        super().__init__(budget=None, sink=0)

    def select(self, n: int, positions: torch.Tensor) -> torch.Tensor | None:
        return None

    def params(self) -> dict[str, Any]:
        return {"budget": None}
