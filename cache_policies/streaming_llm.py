"""StreamingLLM (Xiao et al., 2024): keep ``sink`` attention-sink tokens plus the most recent window.

After every chunk the cache is cut back to ``sink`` + ``budget - sink`` newest tokens, identical for all
layers and heads. With pos-shift positions (handled by the cache) this streams indefinitely.
"""

from __future__ import annotations

import torch

from cache_policies.base import CachePolicy


class StreamingLLM(CachePolicy):
    name = "streaming_llm"

    def select(self, n: int, positions: torch.Tensor) -> torch.Tensor | None:
        assert self.budget is not None
        if n <= self.budget:
            return None
        self.compactions += 1
        window = self.budget - self.sink
        return torch.cat([torch.arange(self.sink), torch.arange(n - window, n)])
