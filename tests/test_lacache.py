"""LaCache against the slow reference written from the paper's rules, plus its geometry and validation."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator

import pytest
import torch

from cache_policies import LaCache, PolicyConfigError, make_policy
from cache_policies.lacache import ladder_geometry
from longread.engine import StreamingEngine
from tests.reference.lacache_ref import LaCacheReference


def stream(
    policy: LaCache, total: int, stride: int, start: tuple[int, torch.Tensor] | None = None
) -> Iterator[tuple[int, torch.Tensor]]:
    """Drive ``policy`` on a position-only cache (L, H=1, n) up to ``total`` tokens, from scratch or from
    ``start`` = (tokens seen, kept positions (L, n)); yield (tokens seen, kept positions) per chunk."""
    layers = policy.num_layers
    seen, kept = start if start is not None else (0, torch.empty(layers, 0, dtype=torch.long))
    cache = kept[:, None, :]  # (L, H=1, n) original positions
    while seen < total:
        size = min(stride, total - seen)
        cache = torch.cat([cache, torch.arange(seen, seen + size).expand(layers, 1, size)], dim=2)
        seen += size
        idx = policy.select(cache.shape[2], cache)
        if idx is not None:
            assert idx.shape == (layers, idx.shape[1]) and idx.shape[1] <= policy.budget
            assert bool((idx[:, 1:] > idx[:, :-1]).all()), "kept slots must be ascending and distinct"
            cache = torch.gather(cache, 2, idx[:, None, :])
        assert cache.shape[2] <= policy.budget
        yield seen, cache[:, 0]


def bound(layers: int, span: int, overlap: int, budget: int, sink: int = 4) -> LaCache:
    policy = LaCache(budget=budget, sink=sink, span=span, overlap=overlap)
    policy.bind(layers, 1)
    return policy


# (layers, span, overlap, budget, stride): strides above budget / 2, strides that do not divide the budget,
# overlap > 0 (R > 1), and chunks longer than the budget (several sweeps inside one chunk).
CHUNKED = [
    (30, 15, 0, 64, 16),
    (30, 15, 0, 64, 50),  # > budget / 2, does not divide it
    (30, 15, 0, 256, 64),  # the issue's example
    (30, 15, 0, 256, 200),
    (30, 9, 7, 80, 50),  # R = 7
    (30, 9, 7, 80, 33),
    (8, 4, 0, 24, 3),
    (8, 4, 0, 24, 100),  # > 4x the budget
    (8, 3, 1, 30, 40),  # R = 2, chunks larger than the budget
    (8, 3, 1, 30, 29),
    (32, 16, 0, 100, 7),
    (32, 8, 4, 120, 70),  # R = 5
    (32, 8, 4, 120, 500),
    (12, 5, 2, 40, 17),  # B, A, R = 4, 2, 2
]


@pytest.mark.parametrize("layers,span,overlap,budget,stride", CHUNKED)
def test_chunked_equals_token_by_token(layers, span, overlap, budget, stride):
    """After every chunk: fast policy at stride s == reference fed s tokens == fast policy at stride 1."""
    total = 1500
    ref = LaCacheReference(layers, span, overlap, sink=4, budget=budget)
    chunked = bound(layers, span, overlap, budget)
    one = bound(layers, span, overlap, budget)  # the token-by-token instance, for its cursor
    by_token = stream(one, total, 1)
    seen1 = 0
    for seen, kept in stream(chunked, total, stride):
        ref.feed(seen - ref.seen)
        while seen1 < seen:
            seen1, kept1 = next(by_token)
        for i in range(layers):
            assert kept[i].tolist() == ref.layers[i], f"layer {i} differs from the reference at {seen}"
        assert torch.equal(kept, kept1), f"stride {stride} differs from stride 1 at {seen} tokens"
        assert (chunked.cursor, chunked.sweeps) == (ref.cursor, ref.sweeps) == (one.cursor, one.sweeps)
        # The guard: the newest L tokens are all still there, in every layer.
        recent = min(layers, seen)
        assert bool((kept[:, -recent:] == torch.arange(seen - recent, seen)).all())
        assert bool((kept[:, : chunked.sink] == torch.arange(min(chunked.sink, seen))).all())
    assert ref.sweeps >= 2


@pytest.mark.parametrize("stride", [1, 64, 256])
def test_issue_example_kept_positions(stride):
    """The issue's example (30 layers, budget 256, S/O 15/0, 4 sinks) at 512 tokens, layer 0: positions
    8-140 at stride 4, 142-448 at stride 2, 449-511 dense -- at every chunk size."""
    *_, (seen, kept) = stream(bound(30, 15, 0, 256), 512, stride)
    assert seen == 512
    expected = list(range(4)) + list(range(4, 141, 4)) + list(range(142, 449, 2)) + list(range(449, 512))
    assert kept[0].tolist() == expected


def test_reference_is_token_by_token():
    """Feeding the reference a chunk is the same as feeding its tokens one by one (its definition), and
    one compaction per step keeps it at the budget from the first overflow on."""
    a, b = LaCacheReference(30, 9, 7, 4, 80), LaCacheReference(30, 9, 7, 4, 80)
    a.feed(700)
    for _ in range(700):
        b.feed(1)
        assert len(b.layers[0]) <= 80
    assert a.layers == b.layers and a.cursor == b.cursor


def test_select_is_fast_for_long_chunks():
    """A long chunk is a few vectorized passes (one per sweep it touches), not one per compaction."""
    policy = bound(30, 15, 0, 2048)
    calls = 0
    real = policy._pass

    def counting(*args):
        nonlocal calls
        calls += 1
        return real(*args)

    policy._pass = counting  # type: ignore[method-assign]
    for _ in stream(policy, 2048 * 8, 512):
        pass
    block_compactions = (2048 * 8 - 2048) // policy.frees  # what a token-by-token stream performs
    assert calls <= policy.compactions + policy.sweeps  # a chunk's passes: 1 + the restarts inside it
    assert calls < block_compactions / 100


def test_state_is_per_stream_copyable_and_reset():
    """The schedule state is a few ints: a deep copy continues identically, reset() starts afresh."""
    policy = bound(30, 9, 7, 80)
    *_, mid = stream(policy, 333, 37)
    copy_ = copy.deepcopy(policy)
    a = [kept for _, kept in stream(policy, 900, 23, start=mid)]
    b = [kept for _, kept in stream(copy_, 900, 23, start=mid)]
    assert len(a) > 20 and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert policy.sweeps > 0
    policy.reset()
    fresh = bound(30, 9, 7, 80)
    assert vars(policy).keys() == vars(fresh).keys()
    for key, value in vars(fresh).items():
        other = vars(policy)[key]
        assert torch.equal(other, value) if isinstance(value, torch.Tensor) else other == value, key


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
        ref.feed(1)
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


@pytest.mark.parametrize("stride", [3, 25])
def test_engine_cache_follows_reference(tiny_llama, stride):
    """Through the real engine (4 layers), the cache's positions per layer equal the reference."""
    policy = make_policy("lacache", budget=20, sink=2, span=2, overlap=0)
    engine = StreamingEngine(tiny_llama, policy, stride=stride)
    ref = LaCacheReference(4, 2, 0, sink=2, budget=20)
    ids = torch.randint(0, 97, (150,))
    for chunk in engine.chunks(ids):
        engine.forward_chunk(chunk, logits=False)
        ref.feed(chunk.numel())
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
        ({"budget": 512, "span": True}, "span=True must be a whole number"),
        ({"budget": 512, "span": "abc"}, "span='abc' must be a whole number"),
    ],
)
def test_rejects_bad_configs(kwargs, match):
    with pytest.raises(PolicyConfigError, match=match):
        LaCache(**kwargs).bind(30, 3)
