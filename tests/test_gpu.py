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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("dim", [64, 128])
def test_triton_rotate_to_slots_matches_torch(dtype, dim):
    """The fused read-mode rotation equals the torch path on strided views of a cache buffer."""
    pytest.importorskip("triton")
    from longread.rope import Rope

    gen = torch.Generator().manual_seed(dim)
    rope = Rope(1.0 / (500000 ** (torch.arange(0, dim, 2).float() / dim)))
    keys = torch.randn(3, 5, 8, 2600, dim, generator=gen).to("cuda", dtype)  # (L, B, H, T, D) buffer
    ins = torch.randint(0, 2600, (3, 5, 8, 2600), generator=gen).cuda()
    x, where = keys[1, 1:4, :, :2561], ins[1, 1:4, :, :2561]
    ref = rope.rotate_to_slots(x, where, use_triton=False)
    got = rope.rotate_to_slots(x, where, use_triton=True)
    if dtype == torch.float32:
        torch.testing.assert_close(got, ref, atol=2e-6, rtol=1e-6)
    else:  # both round the same float32 value once; FMA contraction may flip a rare last bit
        assert (got != ref).float().mean() < 1e-3
        torch.testing.assert_close(got, ref)


@pytest.mark.parametrize("name", ["streaming_llm", "lacache", "cascading"])
def test_cuda_read_mode_equals_delta_mode(name):
    """rope_mode='read' (the Triton rotation on CUDA) and 'delta' give the same logits in float32."""
    from conftest import tiny_model

    from cache_policies import make_policy

    model = tiny_model("llama").to("cuda")
    ids = torch.randint(0, 97, (300,))
    params = {"budget": 64, "span": 2} if name == "lacache" else {"budget": 64}
    out = {}
    for mode in ("delta", "read"):
        engine = StreamingEngine(model, make_policy(name, **params), stride=16, rope_mode=mode)
        out[mode] = torch.cat([engine.forward_chunk(c).float().cpu() for c in engine.chunks(ids)])
    torch.testing.assert_close(out["read"], out["delta"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("rope_mode", ["delta", "read"])
@pytest.mark.parametrize("name", ["streaming_llm", "lacache", "cascading"])
def test_cuda_graph_steps_equal_eager(name, rope_mode):
    """Real CUDA graphs (capture + replay, Triton kernels inside): steady-state feed and one-token decode
    steps replayed from graphs give the eager engine's logits and tokens (float32)."""
    from conftest import tiny_model
    from test_graphs import BUDGET, MATRIX_PARAMS, STRIDE

    from longread.engine import BatchEngine
    from longread.generation import GenerationSettings

    model = tiny_model("llama").to("cuda")
    gen = torch.Generator().manual_seed(11)
    chunks = [[torch.randint(0, 97, (STRIDE,), generator=gen) for _ in range(2)] for _ in range(10)]

    def run(graphs: bool):
        policy = make_policy(name, **{**MATRIX_PARAMS[name], "budget": BUDGET})
        engine = BatchEngine(
            model, policy, rows=2, stride=STRIDE, rope_mode=rope_mode, cuda_graphs=graphs,
            decode_compaction="token",
        )  # fmt: skip
        streams = [engine.open() for _ in range(2)]
        logits = [[x.float().cpu() for x in engine.forward(streams, c)] for c in chunks]
        decoders = [engine.decoder(GenerationSettings(max_new_tokens=12)) for _ in streams]
        for d in decoders:
            d.eos = set()
        while not all(d.done for d in decoders):
            engine.decode(streams, decoders)
        return logits, [list(d.tokens) for d in decoders], engine.graphs.replays

    ref, ref_tokens, _ = run(False)
    got, tokens, replays = run(True)
    assert replays >= 10
    for a_rows, b_rows in zip(got, ref):
        for a, b in zip(a_rows, b_rows):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert tokens == ref_tokens
