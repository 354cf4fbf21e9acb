"""Slow, obviously correct LaCache reference, written straight from ../shared/reference/lacache.md.

Each layer's cache is a Python list of original stream positions. The schedule is defined token by token
(the notes: a chunk of s tokens must leave what s one-token steps leave), so ``feed(count)`` is literally
``count`` single steps: append one token to every layer; while the cache is over budget, compact one ladder
block at the cursor -- start over at the sinks first if the block would reach into the newest L tokens,
keep the layer's A offsets of the B-token block, advance the cursor by A. A block frees R >= 1 slots and a
step adds one token, so the cache never holds more than ``budget`` tokens after a step (a hard cap).
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
        assert budget >= sink + num_layers + self.B, "a block must fit between the sinks and the tail"
        self.layers: list[list[int]] = [[] for _ in range(num_layers)]
        self.cursor = sink
        self.seen = 0
        self.sweeps = 0

    def offsets(self, layer: int) -> list[int]:
        start = layer % (self.R + 1)
        return list(range(start, start + self.A))

    def feed(self, count: int) -> None:
        """Stream ``count`` more tokens, one at a time."""
        for _ in range(count):
            self.step()

    def step(self) -> None:
        for cache in self.layers:
            cache.append(self.seen)
        self.seen += 1
        while len(self.layers[0]) > self.budget:
            self.compact_block()

    def compact_block(self) -> None:
        n = len(self.layers[0])
        if self.cursor + self.B > n - self.L:  # the block would reach into the newest L tokens
            self.cursor = self.sink
            self.sweeps += 1
        c = self.cursor
        for i, cache in enumerate(self.layers):
            block = cache[c : c + self.B]
            assert len(block) == self.B
            self.layers[i] = cache[:c] + [block[o] for o in self.offsets(i)] + cache[c + self.B :]
        self.cursor += self.A
