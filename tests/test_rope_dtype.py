"""Pos-shift in low precision: "delta" re-rounds a moved key at every compaction, "read" never does, and the
engine defaults to the faithful implementation for the model's dtype."""

from __future__ import annotations

import pytest
import torch

from cache_policies import StreamingLLM, make_policy
from longread.cache import BatchCache
from longread.engine import StreamingEngine
from longread.rope import Rope, default_rope_mode

HEAD_DIM = 16


def keys_read_after(dtype: torch.dtype, mode: str, steps: int = 200, budget: int = 32) -> torch.Tensor:
    """Stream random keys token by token through one cache layer under StreamingLLM (every window key moves
    one slot per step); return the keys attention reads at the last step, as float32 ``(1, H, T, D)``."""
    rope = Rope(1.0 / 10000 ** (torch.arange(0, HEAD_DIM, 2, dtype=torch.float32) / HEAD_DIM))
    cache = BatchCache(
        1,
        rope,
        rows=1,
        heads=2,
        head_dim=HEAD_DIM,
        capacity=budget + 1,
        rope_mode=mode,
        dtype=dtype,  # type: ignore[arg-type]
    )
    policy = StreamingLLM(budget=budget, sink=4)
    policy.bind(1, 2)
    gen = torch.Generator().manual_seed(0)
    keys = torch.empty(0)
    for _ in range(steps):
        new = torch.randn(1, 2, 1, HEAD_DIM, generator=gen).to(dtype)  # (B, H, 1, D)
        cache.begin(0, [1], 1)
        read, _ = cache.slots[0].update(new, new)
        cache.end()
        keys = read.to(torch.float32, copy=True)  # "delta" returns a view that compaction rewrites
        idx = policy.select(cache.length(0), cache.positions(0))
        if idx is not None:
            cache.compact([0], idx.expand(1, 1, 2, -1), [idx.shape[-1]])  # (L, n, H, T)
    return keys


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_delta_accumulates_rounding_in_low_precision_read_does_not(dtype):
    exact = keys_read_after(torch.float32, "delta")
    torch.testing.assert_close(keys_read_after(torch.float32, "read"), exact, atol=1e-5, rtol=1e-5)
    err = {mode: (keys_read_after(dtype, mode) - exact).abs().max().item() for mode in ("delta", "read")}
    # "read": the key as stored (one rounding) rotated once (a second): within a few ulps of |key| < 4.
    assert err["read"] <= 5 * torch.finfo(dtype).eps, err
    # "delta": the window's keys were re-rotated and re-rounded up to 28 times (measured: ~9x worse).
    assert err["delta"] > 3 * err["read"], err


@pytest.mark.parametrize(
    "dtype,mode",
    [(torch.float32, "delta"), (torch.float64, "delta"), (torch.bfloat16, "read"), (torch.float16, "read")],
)
def test_default_rope_mode(dtype, mode):
    assert default_rope_mode(dtype) == mode


def test_engine_picks_the_mode_for_its_dtype_unless_told():
    from conftest import tiny_model

    model = tiny_model("llama")
    policy = make_policy("streaming_llm", budget=32)
    assert StreamingEngine(model, policy, stride=4).rope_mode == "delta"
    bf16 = tiny_model("llama").to(torch.bfloat16)
    engine = StreamingEngine(bf16, make_policy("streaming_llm", budget=32), stride=4)
    assert engine.rope_mode == "read" and engine.cache.rope_mode == "read"
    told = StreamingEngine(bf16, make_policy("streaming_llm", budget=32), stride=4, rope_mode="delta")
    assert told.cache.rope_mode == "delta"
