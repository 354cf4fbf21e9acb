"""Allocator settings for the processes that run streams (Ray actors), applied before they start.

Contract: ``ALLOCATOR_ENV`` holds glibc malloc tunables that the driver puts in every actor's
``runtime_env`` (``pipeline.cluster.actor_runtime_env``): Ray starts the actor's process with them in its
environment, so glibc reads them at its first allocation. Why (measured by
``benchmarks/bench_actor_memory.py``, BENCHMARKS.md "Stream-worker memory"): with glibc's default dynamic
mmap threshold, the first free of a large block raises the threshold to that block's size, after which
blocks of that size come from the heap and stay there, fragmented, when freed; an actor's RSS then climbs
with every stream although nothing it holds grows. A fixed threshold keeps large (tensor) blocks on mmap,
returned to the system when freed.
"""

from __future__ import annotations

#: glibc tunables for stream actors (see the contract); plain environment variables, read at process start.
ALLOCATOR_ENV: dict[str, str] = {"MALLOC_MMAP_THRESHOLD_": "131072"}
