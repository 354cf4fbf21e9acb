"""GPU paths (skipped without CUDA): FlashAttention 2 and SDPA on CUDA stream like SDPA on CPU."""

from __future__ import annotations

import pytest
import torch

from cache_policies import make_policy
from longread.engine import StreamingEngine

pytestmark = pytest.mark.gpu


def _stream(model, name, ids, **params):
    engine = StreamingEngine(model, make_policy(name, **params), stride=16)
    return torch.cat([engine.forward_chunk(c).float().cpu() for c in engine.chunks(ids)])


@pytest.mark.parametrize(
    "name,params",
    [
        ("streaming_llm", {"budget": 64}),
        ("lacache", {"budget": 64, "span": 2}),
        ("cascading", {"budget": 64, "cascades": 2}),
    ],
)
def test_flash_attention_matches_sdpa(name, params):
    pytest.importorskip("flash_attn")
    from conftest import tiny_model

    ids = torch.randint(0, 97, (300,))
    sdpa = tiny_model("llama").to("cuda", torch.bfloat16)
    flash = tiny_model("llama", attn_implementation="flash_attention_2").to("cuda", torch.bfloat16)
    a, b = _stream(sdpa, name, ids, **params), _stream(flash, name, ids, **params)
    torch.testing.assert_close(a, b, atol=5e-2, rtol=5e-2)


def test_cuda_sdpa_matches_cpu():
    from conftest import tiny_model

    ids = torch.randint(0, 97, (200,))
    cpu = _stream(tiny_model("llama"), "lacache", ids, budget=48, span=2)
    gpu = _stream(tiny_model("llama").to("cuda"), "lacache", ids, budget=48, span=2)
    torch.testing.assert_close(cpu, gpu, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("dim", [64, 128])
def test_triton_column_sums_match_torch(dtype, dim):
    pytest.importorskip("triton")
    from longread.attention import batched_column_sums

    gen = torch.Generator().manual_seed(dim)
    lengths, sizes, width = [0, 700, 2048, 33], [512, 1, 300, 512], 512
    keys = max(n + width for n in lengths)
    q = torch.randn(4, 8, width, dim, generator=gen).to("cuda", dtype)
    k = torch.randn(4, 2, keys, dim, generator=gen).to("cuda", dtype)
    w = torch.zeros(4, width)
    for i, s in enumerate(sizes):
        w[i, :s] = torch.rand(s, generator=gen)
    w = w.cuda()
    ref = batched_column_sums(q, k, lengths, sizes, w, None, use_triton=False)
    got = batched_column_sums(q, k, lengths, sizes, w, None, use_triton=True)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for i, (n, s) in enumerate(zip(lengths, sizes)):
        torch.testing.assert_close(got[i, :, : n + s], ref[i, :, : n + s], atol=tol, rtol=tol)


@pytest.mark.parametrize("name", ["streaming_llm", "lacache", "cascading", "full"])
def test_batch_on_cuda_equals_single_streams(name):
    """The batched engine on CUDA (Triton column sums for cascading): each stream as alone, float32."""
    from conftest import tiny_model
    from test_batch import alone, batched, plan

    model = tiny_model("llama").to("cuda")
    streams = plan(seed=9, streams=4)
    got = batched(model, name, streams, rows=3, seed=2)
    for i, s in enumerate(streams):
        ref_logits, ref_positions = alone(model, name, s)
        for a, b in zip(got[i]["logits"], ref_logits):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
        for a, b in zip(got[i]["positions"], ref_positions):
            assert torch.equal(a, b)
