"""The contract every KV-cache policy implements.

A policy decides *which* cached tokens survive; it never touches key/value tensors. The engine's cache
(``longread.cache.BoundedCache``) owns the preallocated buffers, appends each chunk, and after every chunk
asks ``policy.select(n)`` for the slots to keep. The answer is an index tensor into the current cache
(ascending slot order, so relative order is preserved), in one of three shapes:

* ``(T,)``       the same slots for every layer and head (full, StreamingLLM);
* ``(L, T)``     per layer, shared by the layer's KV heads (LaCache's ladder);
* ``(L, H, T)``  per layer and KV head (Cascading).

Every layer and head keeps the same count ``T`` so the cache stays one tensor per layer, and ``T`` never
exceeds ``budget``. ``None`` means "keep everything" (nothing to evict yet).

Policies whose choice depends on attention (``needs_scores``) receive per-chunk column sums of the
attention probabilities of every layer through ``observe`` before ``select`` is called.

One policy object holds one stream's state. The engine builds one per stream from a bound prototype
(``copy.deepcopy`` then ``reset``), copies it for snapshots and forks, and persists it for checkpoints
through ``state_dict`` / ``load_state_dict`` (plain tensors and Python values only, so a checkpoint loads
with ``torch.load(weights_only=True)``). Attributes whose names start with ``_`` are derived (caches,
geometry from ``bind``) and are not part of the state.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on ``device`` without making the host wait for the device's queue: a copy from
    pageable memory would synchronize, one from pinned memory is queued like a kernel."""
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


class PolicyConfigError(ValueError):
    """A policy was given parameters it cannot honour; the message names the parameter and the fix."""


def check_int(policy: str, name: str, value: Any) -> int:
    """``value`` as a parameter that counts something (a YAML ``true`` or ``2.5`` is not one)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise PolicyConfigError(
            f"{policy}: {name}={value!r} must be a whole number, got {type(value).__name__} "
            f"(e.g. {policy}:{name}=4)."
        )
    return value


class CachePolicy(ABC):
    name: ClassVar[str]
    #: True when ``select`` uses attention scores passed through ``observe``.
    needs_scores: ClassVar[bool] = False
    #: False only for the full cache, which keeps everything.
    needs_budget: ClassVar[bool] = True

    def __init__(self, budget: int | None, sink: int = 4) -> None:
        if budget is None and self.needs_budget:
            raise PolicyConfigError(
                f"{self.name}: needs a budget (the tokens it keeps), e.g. policy.budget: 512 in the config, "
                f"--budget 512, or {self.name}:budget=512."
            )
        if budget is not None:
            check_int(self.name, "budget", budget)
        check_int(self.name, "sink", sink)
        if budget is not None and budget < 1:
            raise PolicyConfigError(f"{self.name}: budget={budget} must be a positive number of tokens.")
        if sink < 0:
            raise PolicyConfigError(f"{self.name}: sink={sink} must be >= 0.")
        if budget is not None and sink >= budget:
            raise PolicyConfigError(
                f"{self.name}: sink={sink} leaves no room for recent tokens in budget={budget}; "
                f"use sink < budget (typically 4)."
            )
        self.budget = budget
        self.sink = sink
        self.num_layers = 0
        self.num_kv_heads = 0
        self.compactions = 0

    def bind(self, num_layers: int, num_kv_heads: int) -> None:
        """Attach to a model's geometry; policies that depend on it validate here. Resets state."""
        self.num_layers = num_layers
        self.num_kv_heads = num_kv_heads
        self.reset()

    def reset(self) -> None:
        """Forget everything about the current stream (a new stream starts at position 0)."""
        self.compactions = 0

    @property
    def bounded(self) -> bool:
        return self.budget is not None

    @abstractmethod
    def select(self, n: int, positions: torch.Tensor) -> torch.Tensor | None:
        """Slots to keep when the cache holds ``n`` tokens.

        ``positions`` is ``(L, H, n)``: the original stream position of every cached slot. Returns ``None``
        to keep all, or an ascending index tensor of shape ``(T,)``, ``(L, T)`` or ``(L, H, T)``.
        """

    def observe(self, scores: torch.Tensor, n_new: int) -> None:  # noqa: B027 - optional hook
        """Attention column sums ``(L, H_q, n)`` of the chunk just processed; only for ``needs_scores``."""

    def state_dict(self) -> dict[str, Any]:
        """The stream's state (see the module docstring)."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            if key.startswith("_") or not hasattr(self, key):
                raise KeyError(f"{self.name}: {key!r} is not part of this policy's state")
            setattr(self, key, value)

    def params(self) -> dict[str, Any]:
        """The policy's parameters, for result rows and tables."""
        return {"budget": self.budget, "sink": self.sink}

    def stats(self) -> dict[str, Any]:
        """Policy-level counters a caller can log (the cache adds per-layer contents)."""
        return {"compactions": self.compactions}

    def describe(self) -> str:
        extra = ",".join(f"{k}={v}" for k, v in self.params().items() if k not in ("budget",))
        return f"{self.name}(budget={self.budget}{',' if extra else ''}{extra})"

    def __repr__(self) -> str:
        return self.describe()
