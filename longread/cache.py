"""The one adapter between longread's cache policies and transformers' ``Cache`` API.

``BoundedCache`` is a ``transformers.Cache`` whose layers hold preallocated key/value buffers of
``capacity = budget + stride`` slots (bounded policies) or a doubling buffer (the full cache). The model
appends each chunk through ``update``; after the chunk the engine calls ``compact(policy)``, which asks
the policy which slots survive and gathers them to the front of the buffers. Nothing is ever allocated in
proportion to the stream length.

Positions follow StreamingLLM's pos-shift: the key in slot ``j`` is rotated to position ``j`` and the next
query sits at position ``length``. Two equivalent implementations (``rope_mode``):

* ``"delta"``: keys are stored rotated at their current slot; compaction rotates each moved key by
  ``new_slot - old_slot``.
* ``"read"``:  keys stay rotated at the slot where they were inserted; every read rotates them by
  ``slot - inserted_slot`` into a temporary (one rotation from the original, never re-rounded).

Both give the same attention to float tolerance (tested). Every slot also records the token's original
stream position, for policies, statistics and tests.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, Literal

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from longread.rope import Rope

if TYPE_CHECKING:
    from cache_policies.base import CachePolicy

RopeMode = Literal["delta", "read"]


class BoundedLayer(CacheLayerMixin):
    """One decoder layer's slots: keys/values ``(B, H, capacity, D)``, positions ``(H, capacity)``."""

    is_sliding = False
    is_compileable = False
    is_croppable = False

    def __init__(self, owner: BoundedCache) -> None:
        super().__init__()
        self.owner = owner
        self.length = 0  # slots in use
        self.seen = 0  # stream tokens appended so far (the next token's original position)
        self.pos = torch.zeros(0, 0, dtype=torch.long)  # (H, capacity): original stream position per slot
        self.ins = torch.zeros(0, 0, dtype=torch.long)  # (H, capacity): slot the stored key is rotated at

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        batch, heads, chunk, dim = key_states.shape
        cap = self.owner.capacity or max(self.owner.initial_capacity, chunk)
        self.device = key_states.device
        self.keys = key_states.new_zeros(batch, heads, cap, dim)  # (B, H, T, D)
        self.values = value_states.new_zeros(batch, heads, cap, value_states.shape[-1])  # (B, H, T, Dv)
        self.pos = torch.zeros(heads, cap, dtype=torch.long, device=self.device)  # (H, T)
        self.ins = torch.zeros(heads, cap, dtype=torch.long, device=self.device)  # (H, T)
        self.is_initialized = True

    @property
    def capacity(self) -> int:
        return 0 if self.keys is None else self.keys.shape[2]

    def _grow(self, need: int) -> None:
        if self.owner.capacity is not None:
            raise RuntimeError(
                f"a chunk needs {need} cache slots but the bounded cache holds {self.owner.capacity} "
                "(budget + stride); feed chunks of at most `stride` tokens."
            )
        assert self.keys is not None and self.values is not None
        cap = max(need, 2 * self.capacity)
        n = self.length
        keys, values = self.keys, self.values
        self.keys = keys.new_zeros(*keys.shape[:2], cap, keys.shape[3])
        self.values = values.new_zeros(*values.shape[:2], cap, values.shape[3])
        self.keys[:, :, :n] = keys[:, :, :n]
        self.values[:, :, :n] = values[:, :, :n]
        pos, ins = self.pos, self.ins
        self.pos = pos.new_zeros(pos.shape[0], cap)
        self.ins = ins.new_zeros(ins.shape[0], cap)
        self.pos[:, :n] = pos[:, :n]
        self.ins[:, :n] = ins[:, :n]

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        assert self.keys is not None and self.values is not None
        chunk = key_states.shape[2]
        n, end = self.length, self.length + chunk
        if end > self.capacity:
            self._grow(end)
        self.keys[:, :, n:end] = key_states
        self.values[:, :, n:end] = value_states
        self.pos[:, n:end] = torch.arange(self.seen, self.seen + chunk, device=self.device)
        self.ins[:, n:end] = torch.arange(n, end, device=self.device)
        self.length, self.seen = end, self.seen + chunk
        keys = self.keys[:, :, :end]
        if self.owner.rope_mode == "read" and n > 0:
            delta = torch.arange(end, device=self.device) - self.ins[:, :end]  # (H, T)
            if bool(delta.any()):
                keys = self.owner.rope.rotate(keys, delta)
        return keys, self.values[:, :, :end]

    def compact(self, idx: torch.Tensor) -> None:
        """Keep slots ``idx`` ((T,) shared by heads, or (H, T)) and move them to the front, in order."""
        assert self.keys is not None and self.values is not None
        n, kept = self.length, idx.shape[-1]
        idx = idx.to(self.device)
        keys, values = self.keys[:, :, :n], self.values[:, :, :n]
        if idx.ndim == 1:
            new_k, new_v = keys.index_select(2, idx), values.index_select(2, idx)
            new_pos, new_ins = self.pos[:, :n].index_select(1, idx), self.ins[:, :n].index_select(1, idx)
        else:
            batch, heads = keys.shape[:2]
            gk = idx[None, :, :, None].expand(batch, heads, kept, keys.shape[3])
            gv = idx[None, :, :, None].expand(batch, heads, kept, values.shape[3])
            new_k, new_v = keys.gather(2, gk), values.gather(2, gv)
            new_pos, new_ins = self.pos[:, :n].gather(1, idx), self.ins[:, :n].gather(1, idx)
        if self.owner.rope_mode == "delta":
            delta = torch.arange(kept, device=self.device) - idx  # (T,) or (H, T)
            if bool(delta.any()):
                new_k = self.owner.rope.rotate(new_k, delta)
        self.keys[:, :, :kept] = new_k
        self.values[:, :, :kept] = new_v
        self.pos[:, :kept] = new_pos
        self.ins[:, :kept] = new_ins
        self.length = kept

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return self.owner.capacity if self.owner.capacity is not None else -1

    def reset(self) -> None:
        self.length = 0
        self.seen = 0


class BoundedCache(Cache):
    """A pos-shift KV cache for ``num_layers`` layers; ``capacity=None`` grows without bound (full cache)."""

    def __init__(
        self,
        num_layers: int,
        rope: Rope,
        capacity: int | None,
        rope_mode: RopeMode = "delta",
        initial_capacity: int = 1024,
    ) -> None:
        if rope_mode not in ("delta", "read"):
            raise ValueError(f"rope_mode={rope_mode!r}: use 'delta' or 'read'.")
        self.rope = rope
        self.capacity = capacity
        self.rope_mode: RopeMode = rope_mode
        self.initial_capacity = initial_capacity
        self.peak_length = 0
        # The same objects as ``self.layers``, typed, so the rest of this class needs no casts.
        self.slots: list[BoundedLayer] = [BoundedLayer(self) for _ in range(num_layers)]
        super().__init__(layers=list(self.slots))

    @property
    def length(self) -> int:
        return self.slots[0].length if self.slots else 0

    @property
    def seen(self) -> int:
        return self.slots[0].seen if self.slots else 0

    def compact(self, policy: CachePolicy) -> bool:
        """Apply ``policy`` after a chunk; returns whether anything was evicted."""
        n = self.length
        self.peak_length = max(self.peak_length, n)
        if n == 0:
            return False
        positions = torch.stack([layer.pos[:, :n] for layer in self.slots])  # (L, H, n)
        idx = policy.select(n, positions)
        if idx is None:
            return False
        if policy.budget is not None and idx.shape[-1] > policy.budget:
            raise AssertionError(f"{policy}: kept {idx.shape[-1]} tokens, over its budget")
        for i, layer in enumerate(self.slots):
            layer.compact(idx if idx.ndim == 1 else idx[i])
        return True

    def positions(self) -> torch.Tensor:
        """Original stream positions of the cached tokens, ``(L, H, length)``."""
        return torch.stack([layer.pos[:, : layer.length] for layer in self.slots])

    def nbytes(self) -> int:
        """Bytes held by the key/value buffers (allocated, not just used)."""
        total = 0
        for layer in self.slots:
            if layer.keys is not None and layer.values is not None:
                total += layer.keys.nbytes + layer.values.nbytes
        return total

    def layer_stats(self, sink: int = 0) -> list[dict[str, int]]:
        """Per layer: tokens kept, oldest non-sink stream position kept, peak length."""
        out = []
        for i, layer in enumerate(self.slots):
            pos = layer.pos[:, : layer.length]
            rest = pos[pos >= sink]
            out.append(
                {
                    "layer": i,
                    "kept": layer.length,
                    "oldest_pos": int(rest.min()) if rest.numel() else -1,
                }
            )
        return out

    def clone(self) -> BoundedCache:
        """An independent copy (e.g. to answer several questions from one streamed document)."""
        return copy.deepcopy(self)

    def reset(self) -> None:
        for layer in self.slots:
            layer.reset()
        self.peak_length = 0
