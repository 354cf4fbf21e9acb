"""The FlashAttention code path on CPU, with a pure-torch stand-in for the flash-attn kernel.

The real kernel needs CUDA (``tests/test_gpu.py`` runs it when a GPU is present). Everything around the
kernel is ours or transformers' and runs anywhere: the (B, S, H, D) layout, the mask that
``flash_attention_mask`` leaves out, bottom-right causal alignment of a chunk against a longer cache,
the kwargs transformers derives from the kernel's signature, and for score policies our
``longread_fa2`` wrapper. These tests swap in :func:`reference_flash_attn_func`, written from the
flash-attn 2 API contract, and check that streaming every policy through the flash path gives the
logits of the SDPA path.
"""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model
from transformers import modeling_flash_attention_utils as fa_utils

from cache_policies import POLICIES, make_policy
from longread.engine import StreamingEngine

CALLS = {"dense": 0, "varlen": 0}


def _attend(
    q, k, v, softmax_scale, causal, window_size=(-1, -1), dropout_p=0.0, softcap=0.0, alibi_slopes=None
):  # fmt: skip
    """flash-attn 2's contract on (B, S, H, D): GQA by head groups; causal aligned to the bottom-right
    (query i of Sq sees keys j <= i + Sk - Sq), as flash-attn >= 2.1 does."""
    assert dropout_p == 0.0 and window_size == (-1, -1) and not softcap and alibi_slopes is None
    sq, hq, d = q.shape[1], q.shape[2], q.shape[3]
    sk, hk = k.shape[1], k.shape[2]
    assert hq % hk == 0, "flash-attn needs query heads to be a multiple of KV heads"
    scale = d**-0.5 if softmax_scale is None else softmax_scale
    k = k.repeat_interleave(hq // hk, dim=2)
    v = v.repeat_interleave(hq // hk, dim=2)
    logits = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) * scale  # (B, Hq, Sq, Sk)
    if causal:
        visible = torch.arange(sk)[None, :] <= torch.arange(sq)[:, None] + (sk - sq)  # (Sq, Sk)
        logits = logits.masked_fill(~visible, float("-inf"))
    out = torch.einsum("bhqk,bkhd->bqhd", torch.softmax(logits, dim=-1), v.float())
    return out.to(q.dtype)


def reference_flash_attn_func(
    q: torch.Tensor,  # (B, Sq, Hq, D)
    k: torch.Tensor,  # (B, Sk, Hk, D)
    v: torch.Tensor,  # (B, Sk, Hk, D)
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
    causal: bool = False,
    window_size: tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    alibi_slopes: torch.Tensor | None = None,
    deterministic: bool = False,
    return_attn_probs: bool = False,
) -> torch.Tensor:
    """``flash_attn_func``'s signature (transformers derives its kwargs from it)."""
    CALLS["dense"] += 1
    return _attend(q, k, v, softmax_scale, causal, window_size, dropout_p, softcap, alibi_slopes)


def reference_flash_attn_varlen_func(
    q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0, softmax_scale=None,
    causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None, deterministic=False,
    return_attn_probs=False, block_table=None,
):  # fmt: skip
    """Packed sequences (T, H, D) split at ``cu_seqlens``, each attended like a dense batch of one."""
    CALLS["varlen"] += 1
    outs = []
    for i in range(len(cu_seqlens_q) - 1):
        qs = slice(int(cu_seqlens_q[i]), int(cu_seqlens_q[i + 1]))
        ks = slice(int(cu_seqlens_k[i]), int(cu_seqlens_k[i + 1]))
        args = (softmax_scale, causal, window_size, dropout_p, softcap, alibi_slopes)
        outs.append(_attend(q[None, qs], k[None, ks], v[None, ks], *args)[0])
    return torch.cat(outs)


def _lse(q, k, softmax_scale, causal):
    """Natural-log normalizer per (B, H, Sq), for kernels that return it."""
    sq, hq, d = q.shape[1], q.shape[2], q.shape[3]
    sk = k.shape[1]
    scale = d**-0.5 if softmax_scale is None else softmax_scale
    k = k.repeat_interleave(hq // k.shape[2], dim=2)
    logits = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) * scale
    if causal:
        visible = torch.arange(sk)[None, :] <= torch.arange(sq)[:, None] + (sk - sq)
        logits = logits.masked_fill(~visible, float("-inf"))
    return torch.logsumexp(logits, dim=-1)


def reference_fa4_func(
    q, k, v, qv=None, gather_kv_indices=None, softmax_scale=None, causal=False, window_size=(None, None),
    learnable_sink=None, softcap=0.0, num_splits=1, pack_gqa=None, deterministic=False, score_mod=None,
    score_mod_bwd=None, mask_mod=None, aux_tensors=None, aux_scalars=None, block_sparse_tensors=None,
    block_sparse_tensors_bwd=None, return_lse=False, gather_bwd_recompute_p=False,
    gather_bwd_token_chunk=None,
):  # fmt: skip
    """flash-attn-4's ``flash_attn.cute.flash_attn_func``: same layout and causal alignment as FA2, no
    dropout, ``window_size=(None, None)`` for no window, and it returns ``(out, lse)``."""
    CALLS["dense"] += 1
    assert qv is None and learnable_sink is None and not softcap and window_size == (None, None)
    return _attend(q, k, v, softmax_scale, causal), _lse(q, k, softmax_scale, causal)


def reference_fa4_varlen_func(
    q, k, v, qv=None, cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=None, max_seqlen_k=None,
    min_seqlen_k=None, seqused_q=None, seqused_k=None, gather_kv_indices=None, page_table=None,
    softmax_scale=None, causal=False, window_size=(None, None), learnable_sink=None, softcap=0.0,
    num_splits=1, pack_gqa=None, deterministic=False, score_mod=None, score_mod_bwd=None, mask_mod=None,
    block_sparse_tensors=None, aux_tensors=None, aux_scalars=None, return_lse=False,
    scheduler_metadata=None, seqlen_k_per_split=None, disable_scheduler_metadata=False,
    gather_bwd_recompute_p=False, gather_bwd_token_chunk=None,
):  # fmt: skip
    CALLS["varlen"] += 1
    assert seqused_q is None and seqused_k is None and page_table is None
    outs, lses = [], []
    for i in range(len(cu_seqlens_q) - 1):
        qs = slice(int(cu_seqlens_q[i]), int(cu_seqlens_q[i + 1]))
        ks = slice(int(cu_seqlens_k[i]), int(cu_seqlens_k[i + 1]))
        outs.append(_attend(q[None, qs], k[None, ks], v[None, ks], softmax_scale, causal)[0])
        lses.append(_lse(q[None, qs], k[None, ks], softmax_scale, causal)[0])
    return torch.cat(outs), torch.cat(lses, dim=-1)


KERNELS = {
    "flash_attention_2": (reference_flash_attn_func, reference_flash_attn_varlen_func),
    "flash_attention_4": (reference_fa4_func, reference_fa4_varlen_func),
}


@pytest.fixture(params=sorted(KERNELS))
def emulated_flash(request, monkeypatch):
    """Make transformers' lazy flash import resolve to a reference kernel (restored afterwards)."""
    dense, varlen = KERNELS[request.param]
    monkeypatch.setattr(fa_utils, "_loaded_implementation", request.param)
    monkeypatch.setattr(fa_utils, "_flash_fn", dense)
    monkeypatch.setattr(fa_utils, "_flash_varlen_fn", varlen)
    monkeypatch.setattr(fa_utils, "_flash_with_kvcache_fn", None)
    monkeypatch.setattr(fa_utils, "_pad_fn", fa_utils._pad_input)
    monkeypatch.setattr(fa_utils, "_unpad_fn", fa_utils._unpad_input)
    monkeypatch.setattr(fa_utils, "_process_flash_kwargs_fn", fa_utils._lazy_define_process_function(varlen))
    monkeypatch.setattr(fa_utils, "_process_with_kvcache_kwargs_fn", dict)
    CALLS.update(dense=0, varlen=0, implementation=request.param)
    return CALLS


def _flash_model(model_type: str = "llama", implementation: str = "flash_attention_2"):
    model = tiny_model(model_type)
    # Bypasses transformers' "is flash-attn installed and is this CUDA" check, which is the point here.
    model.config._attn_implementation = implementation
    return model


def _stream(model, name: str, ids: torch.Tensor, stride: int, **params) -> torch.Tensor:
    engine = StreamingEngine(model, make_policy(name, **params), stride=stride)
    return torch.cat([engine.forward_chunk(c) for c in engine.chunks(ids)])


POLICY_PARAMS = {
    "full": {},
    "streaming_llm": {"budget": 40},
    "lacache": {"budget": 40, "span": 2},
    "cascading": {"budget": 40, "cascades": 2},
}


def test_every_policy_is_covered():
    assert set(POLICY_PARAMS) == set(POLICIES)


@pytest.mark.parametrize("stride", [1, 16])
@pytest.mark.parametrize("name", sorted(POLICY_PARAMS))
def test_flash_path_matches_sdpa(emulated_flash, name, stride):
    ids = torch.randint(0, 97, (150,), generator=torch.Generator().manual_seed(3))
    sdpa = _stream(tiny_model("llama"), name, ids, stride, **POLICY_PARAMS[name])
    flash = _stream(
        _flash_model("llama", emulated_flash["implementation"]), name, ids, stride, **POLICY_PARAMS[name]
    )
    torch.testing.assert_close(flash, sdpa, atol=2e-5, rtol=2e-5)
    # 4 layers per chunk, all through the dense kernel: one stream never takes the unpad (varlen) path.
    assert emulated_flash["dense"] == 4 * len(range(0, 150, stride))
    assert emulated_flash["varlen"] == 0


@pytest.mark.parametrize("model_type", ["mistral", "qwen2", "qwen3"])
def test_flash_path_other_architectures(emulated_flash, model_type):
    ids = torch.randint(0, 97, (120,), generator=torch.Generator().manual_seed(4))
    sdpa = _stream(tiny_model(model_type), "cascading", ids, 16, budget=40, cascades=2)
    flash = _stream(
        _flash_model(model_type, emulated_flash["implementation"]),
        "cascading",
        ids,
        16,
        budget=40,
        cascades=2,
    )
    torch.testing.assert_close(flash, sdpa, atol=2e-5, rtol=2e-5)


def test_cascading_flash_scores_equal_sdpa_scores(emulated_flash):
    """The score pass of the flash wrapper sees the same (unmasked-by-transformers) chunk: same cascade."""
    ids = torch.randint(0, 97, (200,), generator=torch.Generator().manual_seed(5))
    kept, scores = [], []
    for model in (tiny_model("llama"), _flash_model("llama", emulated_flash["implementation"])):
        engine = StreamingEngine(model, make_policy("cascading", budget=40, cascades=4), stride=8)
        engine.feed(ids)
        kept.append(engine.cache.positions())
        scores.append(engine.policy.scores[..., : engine.policy.length].clone())
    assert torch.equal(kept[0], kept[1])
    assert scores[1].abs().sum() > 0
    torch.testing.assert_close(scores[1], scores[0], atol=1e-6, rtol=1e-5)


def test_scores_refuse_a_sliding_window_that_masks_the_cache():
    """A window shorter than the cache would make the flash output and the column sums disagree."""
    model = tiny_model("mistral", sliding_window=16)
    engine = StreamingEngine(model, make_policy("cascading", budget=40, cascades=2), stride=16)
    with pytest.raises(NotImplementedError, match="sliding window of 16 < 32 cached keys"):
        engine.feed(torch.arange(64) % 97)


@pytest.mark.parametrize("name", sorted(POLICY_PARAMS))
def test_batch_flash_varlen_matches_sdpa_single_streams(emulated_flash, name):
    """Batched rows of different lengths and chunk sizes through the flash wrapper's varlen path: every
    stream's logits equal its SDPA logits alone."""
    from test_batch import alone, batched, plan

    streams = plan(seed=4, streams=4)
    flash = batched(_flash_model("llama", emulated_flash["implementation"]), name, streams, rows=3, seed=5)
    assert emulated_flash["varlen"] > 0 and emulated_flash["dense"] > 0
    for i, s in enumerate(streams):
        ref, _ = alone(tiny_model("llama"), name, s)
        for a, b in zip(flash[i]["logits"], ref):
            torch.testing.assert_close(a, b, atol=2e-5, rtol=2e-5)
