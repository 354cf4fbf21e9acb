"""Slow, obviously correct Cascading KV cache reference, straight from ../shared/reference/cascading.md.

One independent cascade per (layer, KV head): a list of sinks and C ring buffers (slots, start, count) of
W = M / C slots (the first M mod C rings one more, this project's choice when C does not divide M), each
slot a ``[stream position, score]`` pair. Per chunk: the scores of the cache (in cache order,
then the chunk's tokens) are updated with the EMA rule in float32, then the chunk's tokens are inserted
one by one, each walking the sub-cache cases A-D. Cache order: sinks, oldest sub-cache first, each ring
from its start.
"""

from __future__ import annotations

import numpy as np

Slot = list  # [position: int, score: np.float32]


class CascadeHead:
    def __init__(self, sink: int, cascades: int, slots: int) -> None:
        self.sink, self.C, self.M = sink, cascades, slots
        self.W = [slots // cascades + (1 if i < slots % cascades else 0) for i in range(cascades)]
        self.sinks: list[Slot] = []
        self.rings: list[list[Slot | None]] = [[None] * w for w in self.W]
        self.start = [0] * cascades
        self.count = [0] * cascades

    def ring_order(self, i: int) -> list[Slot]:
        out = []
        for k in range(self.count[i]):
            slot = self.rings[i][(self.start[i] + k) % self.W[i]]
            assert slot is not None
            out.append(slot)
        return out

    def cache_order(self) -> list[Slot]:
        out = list(self.sinks)
        for i in reversed(range(self.C)):
            out += self.ring_order(i)
        return out

    def insert(self, token: Slot) -> None:
        r = token[0] + 1  # 1-based index of the token in the stream
        if len(self.sinks) < self.sink:
            self.sinks.append(token)
            return
        M = self.M
        carried = token
        for i in range(self.C):
            eager = r - 1 <= M + self.sink
            is_open = eager or (r - 1 - self.sink) % (2**i) == 0
            ring, start, count, W = self.rings[i], self.start[i], self.count[i], self.W[i]
            if is_open and count < W:  # A
                ring[(start + count) % W] = carried
                self.count[i] += 1
                return
            if is_open:  # B: replace the oldest, carry it on
                oldest = ring[start]
                assert oldest is not None
                ring[start] = carried
                self.start[i] = (start + 1) % W
                carried = oldest
                continue
            if count == 0:  # C
                ring[start] = carried
                self.count[i] = 1
                return
            newest = (start + count - 1) % W  # D
            held = ring[newest]
            assert held is not None
            if carried[1] >= held[1]:
                ring[newest] = carried
            return
        # displaced from the last sub-cache: dropped


class CascadeReference:
    def __init__(
        self, layers: int, kv_heads: int, budget: int, sink: int, cascades: int, beta: float, reduce: str
    ) -> None:
        self.beta, self.reduce, self.kv_heads = beta, reduce, kv_heads
        slots = budget - sink
        self.heads = [[CascadeHead(sink, cascades, slots) for _ in range(kv_heads)] for _ in range(layers)]
        self.seen = 0

    def chunk(self, column_sums: list[np.ndarray], n_new: int) -> None:
        """``column_sums[layer]``: (H_q, n) weighted column sums, n = cached tokens + ``n_new``."""
        decay = np.float32(self.beta**n_new)
        for layer, sums in enumerate(column_sums):
            group = sums.shape[0] // self.kv_heads
            for h, head in enumerate(self.heads[layer]):
                rows = sums[h * group : (h + 1) * group]
                order = head.cache_order()
                assert len(order) + n_new == sums.shape[1]
                for j, slot in enumerate(order):
                    slot[1] = np.float32(np.float32(slot[1] * decay) + self._reduce(rows[:, j]))
                new = [
                    [self.seen + k, np.float32(np.float32(0.0) + self._reduce(rows[:, len(order) + k]))]
                    for k in range(n_new)
                ]
                for token in new:
                    head.insert(token)
        self.seen += n_new

    def _reduce(self, column: np.ndarray) -> np.float32:
        if self.reduce == "max":
            return np.float32(max(float(v) for v in column))
        return np.float32(sum(float(v) for v in column) / len(column))

    def positions(self, layer: int, head: int) -> list[int]:
        return [int(slot[0]) for slot in self.heads[layer][head].cache_order()]

    def scores(self, layer: int, head: int) -> list[float]:
        return [float(slot[1]) for slot in self.heads[layer][head].cache_order()]
