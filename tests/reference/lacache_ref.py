"""Slow, obviously correct LaCache reference, written straight from ../shared/reference/lacache.md.

Each layer's cache is a Python list of original stream positions. Compaction handles one ladder block at a
time: keep the layer's A offsets of the B-token block at the cursor, advance the cursor by A, and start
over at the sinks whenever a whole block no longer fits before the newest L tokens. It stops as soon as
the cache is within budget (a hard cap).
"""

from __future__ import annotations

import math


class LaCacheReference:
    def __init__(self, num_layers: int, span: int, overlap: int, sink: int, budget: int) -> None:
        self.L, self.sink, self.budget = num_layers, sink, budget
        self.B = 1 + math.ceil((num_layers - span) / (span - overlap))
        self.A = min(math.ceil(span / (span - overlap)), self.B)
        self.R = self.B - self.A
        assert self.R >= 1
        self.layers: list[list[int]] = [[] for _ in range(num_layers)]
        self.cursor = sink
        self.seen = 0
        self.sweeps = 0

    def offsets(self, layer: int) -> list[int]:
        start = layer % (self.R + 1)
        return list(range(start, start + self.A))

    def append(self, count: int) -> None:
        for cache in self.layers:
            cache.extend(range(self.seen, self.seen + count))
        self.seen += count

    def compact(self) -> None:
        while len(self.layers[0]) > self.budget:
            n = len(self.layers[0])
            if self.cursor + self.B > n - self.L:
                self.cursor = self.sink
                self.sweeps += 1
            c = self.cursor
            for i, cache in enumerate(self.layers):
                block = cache[c : c + self.B]
                self.layers[i] = cache[:c] + [block[o] for o in self.offsets(i)] + cache[c + self.B :]
            self.cursor += self.A
