"""Bounded KV-cache policies behind one interface (see ``cache_policies.base``), in an explicit registry."""

from __future__ import annotations

from typing import Any

from cache_policies.base import CachePolicy, PolicyConfigError
from cache_policies.cascading import Cascading
from cache_policies.full import FullCache
from cache_policies.lacache import LaCache
from cache_policies.streaming_llm import StreamingLLM

POLICIES: dict[str, type[CachePolicy]] = {
    FullCache.name: FullCache,
    StreamingLLM.name: StreamingLLM,
    LaCache.name: LaCache,
    Cascading.name: Cascading,
}


def make_policy(name: str, **params: Any) -> CachePolicy:
    """Build a registered policy by name; unknown names and parameters get an error that lists the options."""
    try:
        cls = POLICIES[name]
    except KeyError:
        raise PolicyConfigError(f"unknown cache policy {name!r}; choose one of {sorted(POLICIES)}.") from None
    try:
        return cls(**params)
    except TypeError as exc:
        raise PolicyConfigError(f"{name}: {exc}. Check the policy's parameters in the README.") from None


__all__ = [
    "POLICIES",
    "CachePolicy",
    "FullCache",
    "LaCache",
    "PolicyConfigError",
    "StreamingLLM",
    "make_policy",
]
