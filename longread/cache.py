"""The one adapter between longread's cache policies and transformers' ``Cache`` API, for many streams.

``BatchCache`` is a ``transformers.Cache`` over ``rows`` independent streams. All layers share one set of
preallocated buffers (``Buffers``):

* keys / values ``(L, B, H, capacity, D)``: ``capacity = budget + stride`` for bounded policies (never
  regrown); an unbounded (full) cache doubles its capacity when a chunk does not fit;
* ``pos`` ``(L, B, H, capacity)``: the original stream position of every slot (policies, statistics, tests);
* ``ins`` ``(L, B, H, capacity)``: the slot each stored key is rotated at (``rope_mode="read"`` only).

Row ``b`` uses slots ``[0, length[b])``. A forward runs on a contiguous block of rows ``[a, a + n)`` (the
engine arranges that by swapping rows): ``begin`` records per row the cached length and the chunk size, and
writes the chunk's stream positions; every layer's ``update`` then writes the chunk's keys and values at
``[length[b], length[b] + width)`` of each row (``width`` = the longest chunk; padding lands after the
row's chunk, where the mask hides it and the next chunk overwrites it) and returns views of the block's
first ``max(length) + width`` slots. ``end`` commits the lengths. After the forward, ``compact`` keeps the
chosen slots of many rows, for all layers, with one gather per group of layers (sized so temporaries stay
small), rotating moved keys on the way in ``delta`` mode -- no per-row Python loop, no host synchronization.

Positions follow StreamingLLM's pos-shift: the key in slot ``j`` is rotated to position ``j`` and a row's
next query sits at position ``length[b]``. Two equivalent implementations (``rope_mode``):

* ``"delta"``: keys are stored rotated at their current slot; compaction rotates each moved key by
  ``new_slot - old_slot`` (in float32, stored back in the cache's dtype);
* ``"read"``:  keys stay rotated at the slot where they were inserted; every read rotates them by
  ``slot - inserted_slot`` into a temporary (one rotation from the original, never re-rounded).

The layers hold the shared ``Buffers``, never the cache itself: no reference cycle, so a dropped cache is
freed at once (not when Python's cycle collector happens to run).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from longread.rope import Rope, unexpanded

RopeMode = Literal["delta", "read"]

#: Bytes of float32 temporaries one compaction pass may allocate; layers are processed in groups below it.
COMPACT_TEMP_BYTES = 256 << 20


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on ``device`` without making the host wait for the device's queue: a copy from
    pageable memory would synchronize, one from pinned memory is queued like a kernel."""
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


@dataclass
class Buffers:
    """Everything the cache stores, plus the current forward's block of rows (see the module docstring)."""

    num_layers: int
    rows: int
    heads: int
    head_dim: int
    value_dim: int
    capacity: int
    growable: bool
    rope: Rope
    rope_mode: RopeMode
    dtype: torch.dtype
    device: torch.device
    keys: torch.Tensor = field(init=False)  # (L, B, H, T, D)
    values: torch.Tensor = field(init=False)  # (L, B, H, T, Dv)
    pos: torch.Tensor = field(init=False)  # (L, B, H, T) int64: original stream position
    ins: torch.Tensor = field(init=False)  # (L, B, H, T) int64: slot the stored key is rotated at
    length: list[int] = field(init=False)  # (B,) slots in use
    seen: list[int] = field(init=False)  # (B,) stream tokens appended so far
    # The forward in progress: rows [row0, row0 + n), per-row cached length and chunk size, padded width.
    row0: int = 0
    lengths: list[int] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    width: int = 0
    uniform: bool = True
    write_index: torch.Tensor | None = None  # (n, 1, S, 1): slot of each chunk position, per row

    def __post_init__(self) -> None:
        self.keys = self._zeros(self.head_dim, self.dtype)
        self.values = self._zeros(self.value_dim, self.dtype)
        self.pos = torch.zeros(self.num_layers, self.rows, self.heads, self.capacity, dtype=torch.long)
        self.pos = self.pos.to(self.device)
        self.ins = torch.zeros_like(self.pos)
        self.length = [0] * self.rows
        self.seen = [0] * self.rows

    def _zeros(self, dim: int, dtype: torch.dtype, capacity: int | None = None) -> torch.Tensor:
        shape = (self.num_layers, self.rows, self.heads, capacity or self.capacity, dim)
        return torch.zeros(shape, dtype=dtype, device=self.device)

    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes

    # ------------------------------------------------------------------ growth (full cache only)
    def ensure(self, need: int) -> None:
        if need <= self.capacity:
            return
        if not self.growable:
            raise RuntimeError(
                f"a chunk needs {need} cache slots but the bounded cache holds {self.capacity} "
                "(budget + stride); feed chunks of at most `stride` tokens."
            )
        cap = max(need, 2 * self.capacity)
        used = max(self.length)
        for name, dim in (("keys", self.head_dim), ("values", self.value_dim)):
            old = getattr(self, name)
            new = self._zeros(dim, old.dtype, cap)
            new[..., :used, :] = old[..., :used, :]
            setattr(self, name, new)
        for name in ("pos", "ins"):
            old = getattr(self, name)
            new = old.new_zeros(*old.shape[:3], cap)
            new[..., :used] = old[..., :used]
            setattr(self, name, new)
        self.capacity = cap


class BatchLayer(CacheLayerMixin):
    """One decoder layer's view of the shared buffers."""

    is_sliding = False
    is_compileable = False
    is_croppable = False

    def __init__(self, index: int, buffers: Buffers) -> None:
        super().__init__()
        self.index = index
        self.buffers = buffers
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        return None  # preallocated

    @property
    def capacity(self) -> int:
        return self.buffers.capacity

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.buffers
        n, width = key_states.shape[0], key_states.shape[2]
        if n != len(b.lengths) or width != b.width:
            raise RuntimeError(
                f"layer {self.index} got a chunk of shape {tuple(key_states.shape)} outside the engine's "
                f"forward ({len(b.lengths)} rows x {b.width}); drive BatchCache through longread.engine."
            )
        keys = b.keys[self.index, b.row0 : b.row0 + n]  # (n, H, T, D) view
        values = b.values[self.index, b.row0 : b.row0 + n]
        if b.uniform:
            start = b.lengths[0]
            keys[:, :, start : start + width] = key_states
            values[:, :, start : start + width] = value_states
        else:
            assert b.write_index is not None
            index = b.write_index.expand(-1, key_states.shape[1], -1, key_states.shape[3])
            keys.scatter_(2, index, key_states)
            values.scatter_(
                2, b.write_index.expand(-1, value_states.shape[1], -1, value_states.shape[3]), value_states
            )
        end = max(b.lengths) + width
        out = keys[:, :, :end]
        if b.rope_mode == "read":
            out = b.rope.rotate_to_slots(out, b.ins[self.index, b.row0 : b.row0 + n, :, :end])
        return out, values[:, :, :end]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return max(self.buffers.lengths or [0]) + query_length, 0

    def get_seq_length(self) -> int:
        return max(self.buffers.lengths or [0])

    def get_max_length(self) -> int:
        return -1 if self.buffers.growable else self.buffers.capacity

    def reset(self) -> None:
        return None


class BatchCache(Cache):
    """A pos-shift KV cache for ``rows`` streams of a ``num_layers``-layer model (see the module doc)."""

    def __init__(
        self,
        num_layers: int,
        rope: Rope,
        *,
        rows: int,
        heads: int,
        head_dim: int,
        value_dim: int | None = None,
        capacity: int | None,
        rope_mode: RopeMode = "delta",
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        initial_capacity: int = 1024,
    ) -> None:
        if rope_mode not in ("delta", "read"):
            raise ValueError(f"rope_mode={rope_mode!r}: use 'delta' or 'read'.")
        if rows < 1:
            raise ValueError(f"rows={rows} must be >= 1")
        self.buffers = Buffers(
            num_layers=num_layers,
            rows=rows,
            heads=heads,
            head_dim=head_dim,
            value_dim=value_dim or head_dim,
            capacity=capacity or initial_capacity,
            growable=capacity is None,
            rope=rope,
            rope_mode=rope_mode,
            dtype=dtype,
            device=torch.device(device),
        )
        self.slots: list[BatchLayer] = [BatchLayer(i, self.buffers) for i in range(num_layers)]
        super().__init__(layers=list(self.slots))

    # ------------------------------------------------------------------ facts
    @property
    def rows(self) -> int:
        return self.buffers.rows

    @property
    def capacity(self) -> int:
        return self.buffers.capacity

    @property
    def rope_mode(self) -> RopeMode:
        return self.buffers.rope_mode

    def length(self, row: int) -> int:
        return self.buffers.length[row]

    def seen(self, row: int) -> int:
        return self.buffers.seen[row]

    def positions(self, row: int) -> torch.Tensor:
        """Original stream positions of a row's cached tokens, ``(L, H, length)``."""
        return self.buffers.pos[:, row, :, : self.buffers.length[row]]

    def nbytes(self) -> int:
        """Bytes held by all key/value buffers (allocated, not just used)."""
        return self.buffers.nbytes()

    # ------------------------------------------------------------------ one forward
    def begin(self, row0: int, sizes: Sequence[int], width: int) -> None:
        """Prepare rows ``[row0, row0 + len(sizes))`` for a chunk of ``sizes[i]`` tokens each, padded to
        ``width``."""
        b = self.buffers
        n = len(sizes)
        lengths = b.length[row0 : row0 + n]
        b.ensure(max(lengths) + width)
        b.row0, b.lengths, b.sizes, b.width = row0, list(lengths), list(sizes), width
        b.uniform = len(set(lengths)) == 1
        device = b.device
        steps = torch.arange(width, device=device)
        start = to_device(torch.tensor(lengths), device)[:, None]  # (n, 1)
        slots = start + steps  # (n, S)
        b.write_index = None if b.uniform else slots[:, None, :, None]
        seen = to_device(torch.tensor(b.seen[row0 : row0 + n]), device)[:, None] + steps  # (n, S)
        rows = slice(row0, row0 + n)
        shape = (b.num_layers, n, b.heads, width)
        index = slots[None, :, None, :].expand(shape)
        b.pos[:, rows].scatter_(3, index, seen[None, :, None, :].expand(shape))
        if b.rope_mode == "read":
            b.ins[:, rows].scatter_(3, index, slots[None, :, None, :].expand(shape))

    def end(self, commit: bool = True) -> None:
        """Close the forward: commit the chunk to every row, or (after a failed forward) drop it."""
        b = self.buffers
        if commit:
            for i, size in enumerate(b.sizes):
                b.length[b.row0 + i] += size
                b.seen[b.row0 + i] += size
        b.lengths, b.sizes, b.width, b.write_index = [], [], 0, None

    # ------------------------------------------------------------------ compaction
    def compact(self, rows: Sequence[int], index: torch.Tensor, kept: Sequence[int]) -> None:
        """Keep slots ``index[:, i]`` ((L, n, H, T), ascending, padded past ``kept[i]``) of row ``rows[i]``,
        moved to the front in order, for every layer."""
        b = self.buffers
        if not rows:
            return
        n, width = len(rows), index.shape[-1]
        source = max(b.length[r] for r in rows)
        index = to_device(index, b.device)
        block = slice(rows[0], rows[0] + n) if list(rows) == list(range(rows[0], rows[0] + n)) else None
        picked = to_device(torch.tensor(list(rows)), b.device)

        def take(t: torch.Tensor) -> torch.Tensor:
            return t[:, block] if block is not None else t[:, picked]

        def put(t: torch.Tensor, value: torch.Tensor) -> None:
            if block is not None:
                t[:, block, :, :width] = value
            else:
                t[:, picked, :, :width] = value

        per_layer = n * b.heads * width * max(b.head_dim, b.value_dim) * 4 * 3
        group = max(1, min(b.num_layers, COMPACT_TEMP_BYTES // max(1, per_layer)))
        for first in range(0, b.num_layers, group):
            layers = slice(first, min(first + group, b.num_layers))
            idx = index[layers]  # (Lg, n, H, T)
            for name, dim in (("keys", b.head_dim), ("values", b.value_dim)):
                src = take(getattr(b, name)[layers])[..., :source, :]  # (Lg, n, H, source, D)
                new = src.gather(3, idx[..., None].expand(*idx.shape, dim))
                if name == "keys" and b.rope_mode == "delta":
                    # delta in the index's own (unexpanded) shape: one angle per distinct value
                    new = b.rope.rotate(new, torch.arange(width, device=b.device) - unexpanded(idx))
                put(getattr(b, name)[layers], new)
        for name in ("pos", "ins") if b.rope_mode == "read" else ("pos",):
            t = getattr(b, name)
            put_src = take(t)[..., :source].gather(3, index)
            if block is not None:
                t[:, block, :, :width] = put_src
            else:
                t[:, picked, :, :width] = put_src
        for r, k in zip(rows, kept):
            b.length[r] = k

    # ------------------------------------------------------------------ rows
    def reset_row(self, row: int) -> None:
        self.buffers.length[row] = 0
        self.buffers.seen[row] = 0

    def copy_row(self, src: int, dst: int) -> None:
        b = self.buffers
        used = b.length[src]
        for t in (b.keys, b.values):
            t[:, dst, :, :used] = t[:, src, :, :used]
        for t in (b.pos, b.ins):
            t[:, dst, :, :used] = t[:, src, :, :used]
        b.length[dst], b.seen[dst] = used, b.seen[src]

    def swap_rows(self, i: int, j: int) -> None:
        b = self.buffers
        used = max(b.length[i], b.length[j])
        pair, swapped = [i, j], [j, i]
        for t in (b.keys, b.values, b.pos, b.ins):
            t[:, pair, :, :used] = t[:, swapped, :, :used]
        b.length[i], b.length[j] = b.length[j], b.length[i]
        b.seen[i], b.seen[j] = b.seen[j], b.seen[i]

    def save_row(self, row: int) -> dict[str, Any]:
        """A copy of one row's state (tensors cloned up to its length)."""
        b = self.buffers
        used = b.length[row]
        return {
            "keys": b.keys[:, row, :, :used].clone(),
            "values": b.values[:, row, :, :used].clone(),
            "pos": b.pos[:, row, :, :used].clone(),
            "ins": b.ins[:, row, :, :used].clone(),
            "length": used,
            "seen": b.seen[row],
        }

    def load_row(self, row: int, state: dict[str, Any]) -> None:
        b = self.buffers
        used = int(state["length"])
        b.ensure(used)
        for name in ("keys", "values", "pos", "ins"):
            getattr(b, name)[:, row, :, :used] = state[name].to(b.device)
        b.length[row], b.seen[row] = used, int(state["seen"])
