"""LaCache against the slow reference written from the paper's rules, plus its geometry and validation."""

from __future__ import annotations

import itertools

import pytest
import torch

from cache_policies import LaCache, PolicyConfigError, make_policy
from cache_policies.lacache import ladder_geometry
from longread.engine import StreamingEngine
from tests.reference.lacache_ref import LaCacheReference


def simulate(policy: LaCache, ref: LaCacheReference, total: int, stride: int) -> int:
    """Drive the fast policy on a position-only cache and compare with the reference after every chunk."""
    layers = policy.num_layers
    cache = torch.empty(layers, 1, 0, dtype=torch.long)  # (L, H=1, n) original positions
    seen, checks = 0, 0
    while seen < total:
        size = min(stride, total - seen)
        new = torch.arange(seen, seen + size).expand(layers, 1, size)
        cache = torch.cat([cache, new], dim=2)
        seen += size
        ref.append(size)
        idx = policy.select(cache.shape[2], cache)
        ref.compact()
        if idx is not None:
            idx = idx.expand(layers, -1) if idx.ndim == 1 else idx
            cache = torch.gather(cache, 2, idx[:, None, :])
            checks += 1
        assert cache.shape[2] <= policy.budget
        for i in range(layers):
            assert cache[i, 0].tolist() == ref.layers[i], f"layer {i} differs after {seen} tokens"
        assert policy.cursor == ref.cursor
    return checks


@pytest.mark.parametrize(
    "layers,span,overlap,budget,stride",
    [
        (30, 15, 0, 64, 1),
        (30, 15, 0, 64, 16),
        (30, 9, 7, 80, 1),
        (30, 9, 7, 80, 50),
        (8, 4, 0, 24, 3),
        (8, 3, 1, 30, 40),  # chunks larger than the budget: several passes and sweeps per compaction
        (32, 16, 0, 100, 7),
        (32, 8, 4, 120, 1),
    ],
)
def test_kept_positions_match_reference(layers, span, overlap, budget, stride):
    policy = LaCache(budget=budget, sink=4, span=span, overlap=overlap)
    policy.bind(layers, 1)
    ref = LaCacheReference(layers, span, overlap, sink=4, budget=budget)
    assert simulate(policy, ref, total=1500, stride=stride) > 0
    assert ref.sweeps >= 2 and policy.sweeps == ref.sweeps


@pytest.mark.parametrize(
    "layers,span,overlap,expected",
    [(30, 15, 0, (2, 1, 1)), (30, 9, 7, (12, 5, 7)), (32, 16, 0, (2, 1, 1)), (32, 8, 4, (7, 2, 5))],
)
def test_ladder_geometry(layers, span, overlap, expected):
    assert ladder_geometry(layers, span, overlap) == expected


def test_interleaved_ladder_even_odd():
    """S = L/2, O = 0: even layers keep even block tokens, odd layers odd ones (not contiguous groups)."""
    policy = LaCache(budget=40, sink=0, span=4, overlap=0)
    policy.bind(8, 1)
    n = 41
    idx = policy.select(n, torch.arange(n).expand(8, 1, n))
    assert idx is not None
    first = idx[:, 0]  # the first block at the cursor (slot 0, no sinks)
    assert first.tolist() == [0, 1, 0, 1, 0, 1, 0, 1]


def test_older_regions_get_sparser_every_sweep():
    ref = LaCacheReference(30, 15, 0, sink=4, budget=256)
    old_counts = []
    sweeps = 0
    for _ in range(5000):
        ref.append(1)
        ref.compact()
        if ref.sweeps != sweeps:
            sweeps = ref.sweeps
            if ref.seen > 500:  # positions 4..199 are long out of the dense tail: count their survivors
                old_counts.append(sum(1 for p in ref.layers[0] if 4 <= p < 200))
    thinning = [c for c in old_counts if c > 1]  # a lone survivor is too short a region to compact again
    assert len(thinning) >= 3
    assert all(b < a for a, b in itertools.pairwise(thinning)), old_counts
    # Density decays with age: the older half of the kept tokens is sparser than the newer half.
    kept = ref.layers[0][4:]
    gaps = [b - a for a, b in itertools.pairwise(kept)]
    assert sum(gaps[: len(gaps) // 2]) > sum(gaps[len(gaps) // 2 :])


def test_engine_cache_follows_reference(tiny_llama):
    """Through the real engine (4 layers), the cache's positions per layer equal the reference."""
    policy = make_policy("lacache", budget=20, sink=2, span=2, overlap=0)
    engine = StreamingEngine(tiny_llama, policy, stride=3)
    ref = LaCacheReference(4, 2, 0, sink=2, budget=20)
    ids = torch.randint(0, 97, (150,))
    for chunk in engine.chunks(ids):
        engine.forward_chunk(chunk, logits=False)
        ref.append(chunk.numel())
        ref.compact()
        pos = engine.cache.positions()
        for i in range(4):
            assert pos[i, 0].tolist() == ref.layers[i]
            assert bool((pos[i] == pos[i, :1]).all())  # heads share the ladder


def test_rejects_zero_free_ladder():
    with pytest.raises(PolicyConfigError, match="R=0"):
        LaCache(budget=512, span=4, overlap=3).bind(4, 1)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"budget": 30, "span": 15}, "budget=30 is too small"),
        ({"budget": 512, "span": 31}, "span=31"),
        ({"budget": 512, "span": 15, "overlap": 15}, "overlap=15"),
    ],
)
def test_rejects_bad_configs(kwargs, match):
    with pytest.raises(PolicyConfigError, match=match):
        LaCache(**kwargs).bind(30, 3)
