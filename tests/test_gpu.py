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
