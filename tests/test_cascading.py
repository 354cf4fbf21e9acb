"""Cascading KV cache: the vectorized cascade against the slow reference, the exact attention scores, and
its equivalence with StreamingLLM at C = 1."""

from __future__ import annotations

import random

import pytest
import torch
from torch.overrides import TorchFunctionMode
from transformers import DynamicCache

from cache_policies import Cascading, PolicyConfigError, make_policy
from longread.attention import (
    SDPA_NAME,
    column_sums,
    record_scores,
    sdpa_with_scores,
    use_score_attention,
)
from longread.engine import StreamingEngine
from tests.conftest import tiny_model
from tests.reference.cascade_ref import CascadeReference


def stream(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 97, (n,), generator=torch.Generator().manual_seed(seed))


def run_engine(model, policy, ids: torch.Tensor, stride: int, check=None) -> torch.Tensor:
    engine = StreamingEngine(model, policy, stride=stride)
    out = []
    for chunk in engine.chunks(ids):
        logits = engine.forward_chunk(chunk)
        assert logits is not None
        out.append(logits)
        if check is not None:
            check(engine)
    return torch.cat(out)


# ------------------------------------------------------------------ cascade vs reference
def simulate(
    budget: int,
    sink: int,
    cascades: int,
    strides: list[int],
    total: int,
    seed: int,
    reduce: str,
    dyadic: bool,
) -> int:
    """Random chunk sizes and column sums into the fast policy and the reference; compare after every chunk.

    Returns how many (chunk, layer, head) states had heads of one layer keeping different tokens.
    """
    layers, heads, group, beta = 2, 3, 2, 0.9
    gen = torch.Generator().manual_seed(seed)
    chooser = random.Random(seed)
    policy = Cascading(budget, sink=sink, cascades=cascades, beta=beta, reduce=reduce)  # type: ignore[arg-type]
    policy.bind(layers, heads)
    ref = CascadeReference(layers, heads, budget, sink, cascades, beta, reduce)
    cache = torch.empty(layers, heads, 0, dtype=torch.long)  # (L, H, n) stream positions, in slot order
    seen = differing = 0
    while seen < total:
        size = min(chooser.choice(strides), total - seen)
        cache = torch.cat([cache, torch.arange(seen, seen + size).expand(layers, heads, size)], dim=2)
        seen += size
        n = cache.shape[2]
        if dyadic:  # exact in float32 for any reduction, and full of ties
            sums = [torch.randint(0, 4, (heads * group, n), generator=gen).float() / 4 for _ in range(layers)]
        else:
            sums = [torch.rand(heads * group, n, generator=gen) for _ in range(layers)]
        policy.observe(torch.stack(sums), size)
        idx = policy.select(n, cache)
        if idx is not None:
            cache = cache.gather(2, idx)
        ref.chunk([s.numpy() for s in sums], size)
        assert cache.shape[2] <= budget
        for layer in range(layers):
            for head in range(heads):
                where = f"after {seen} tokens, layer {layer} head {head}"
                assert cache[layer, head].tolist() == ref.positions(layer, head), where
                assert policy.scores[layer, head, : cache.shape[2]].tolist() == ref.scores(layer, head), where
            differing += int(not all(torch.equal(cache[layer, 0], cache[layer, h]) for h in range(heads)))
    return differing


@pytest.mark.parametrize(
    "budget,sink,cascades",
    [
        *[(20, 4, 4), (16, 0, 2), (12, 2, 1), (27, 3, 8), (9, 1, 8), (35, 5, 3), (68, 4, 4)],
        # sub-caches of unequal widths (C does not divide budget - sink): 5,5,5,4 / 6,6,6,5,5 / 5,4,4
        *[(23, 4, 4), (30, 2, 5), (13, 0, 3)],
    ],
)
@pytest.mark.parametrize("strides", [[1], [3, 7], [16], [1, 5, 40]])
def test_fast_cascade_matches_reference(budget, sink, cascades, strides):
    differing = 0
    for seed in range(4):
        differing += simulate(budget, sink, cascades, strides, 160, seed, "max", dyadic=False)
        differing += simulate(budget, sink, cascades, strides, 120, seed, "max", dyadic=True)
        differing += simulate(budget, sink, cascades, strides, 120, seed, "mean", dyadic=True)
    if cascades > 1:
        assert differing > 0, "heads never kept different tokens: per-head contents are not exercised"


class CountOps(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


def ops_per_chunk(chunk: int, heads: int) -> int:
    """Torch calls in one steady-state observe + select, long after the eager fill."""
    layers, budget = 3, 132
    policy = Cascading(budget, sink=4, cascades=4)
    policy.bind(layers, heads)
    gen = torch.Generator().manual_seed(0)
    cache = torch.empty(layers, heads, 0, dtype=torch.long)
    for step in range(40):
        seen = step * chunk
        cache = torch.cat([cache, torch.arange(seen, seen + chunk).expand(layers, heads, chunk)], dim=2)
        sums = torch.rand(layers, heads, cache.shape[2], generator=gen)
        counter = CountOps()
        with counter:
            policy.observe(sums, chunk)
            idx = policy.select(cache.shape[2], cache)
        assert idx is not None or seen + chunk <= budget
        if idx is not None:
            cache = cache.gather(2, idx)
    return counter.calls


def test_insertion_is_vectorized():
    """A fixed number of tensor ops per chunk, whatever the chunk length or the number of heads."""
    base = ops_per_chunk(8, 1)
    assert ops_per_chunk(64, 1) == base
    assert ops_per_chunk(8, 6) == base


# ------------------------------------------------------------------ engine-level behaviour
@pytest.mark.parametrize("stride", [1, 7, 64])
@pytest.mark.parametrize("sink", [0, 4])
def test_one_cascade_is_streaming_llm(tiny_llama, stride, sink):
    ids = stream(260)
    kept: dict[str, torch.Tensor] = {}
    logits = {}
    for name, extra in (("streaming_llm", {}), ("cascading", {"cascades": 1})):
        positions: list[torch.Tensor] = []
        policy = make_policy(name, budget=40, sink=sink, **extra)
        logits[name] = run_engine(
            tiny_llama, policy, ids, stride, lambda e, p=positions: p.append(e.cache.positions())
        )
        kept[name] = torch.cat(positions, dim=2)
    assert torch.equal(kept["cascading"], kept["streaming_llm"])
    assert torch.equal(logits["cascading"], logits["streaming_llm"])


@pytest.mark.parametrize("stride", [1, 5, 32])
@pytest.mark.parametrize("cascades", [2, 3, 4])  # 3: widths 14, 13, 13
def test_budget_sinks_and_cache_order(tiny_llama, stride, cascades):
    budget, sink = 44, 4

    def check(engine):
        pos = engine.cache.positions()  # (L, H, n)
        assert pos.shape[2] <= budget
        seen = engine.tokens_seen
        assert torch.equal(
            pos[..., : min(sink, seen)], torch.arange(min(sink, seen)).expand(*pos.shape[:2], -1)
        )
        assert bool((pos[..., 1:] > pos[..., :-1]).all()), "cache order must be stream order"
        assert int(pos[..., -1].min()) == seen - 1, "the newest token is always kept"

    run_engine(
        tiny_llama,
        make_policy("cascading", budget=budget, sink=sink, cascades=cascades),
        stream(400),
        stride,
        check,
    )


def test_cascades_reach_further_back_than_a_window(tiny_llama):
    engine = StreamingEngine(tiny_llama, make_policy("cascading", budget=44, sink=4, cascades=4), stride=8)
    engine.feed(stream(600))
    oldest = int(engine.cache.positions()[..., 4:].min())
    assert oldest < 600 - 40 * 2, f"4 cascades of 10 should span ~150 tokens, oldest kept is {oldest}"


@pytest.mark.parametrize("stride", [1, 9, 64])
def test_budget_covering_stream_equals_full_cache(tiny_llama, stride):
    ids = stream(150)
    full = tiny_llama(ids[None]).logits[0]
    got = run_engine(tiny_llama, make_policy("cascading", budget=164, sink=4, cascades=4), ids, stride)
    torch.testing.assert_close(got, full, rtol=1e-5, atol=1e-5)


def test_generate_and_snapshot(tiny_llama):
    engine = StreamingEngine(tiny_llama, make_policy("cascading", budget=36, sink=4, cascades=2), stride=16)
    engine.feed(stream(200))
    snap = engine.snapshot()
    first = engine.generate(max_new_tokens=30).token_ids
    assert engine.cache.length <= 36
    engine.restore(snap)
    assert engine.generate(max_new_tokens=30).token_ids == first


def test_score_time_is_reported(tiny_llama):
    engine = StreamingEngine(tiny_llama, make_policy("cascading", budget=36, sink=4, cascades=2), stride=16)
    engine.feed(stream(100))
    assert 0 < engine.stats.extra["score_seconds"] < engine.stats.forward_seconds


# ------------------------------------------------------------------ scores
@pytest.mark.parametrize("prompt", [6, 40])
def test_deferred_decode_steps_score_like_one_chunk(tiny_llama, prompt):
    """Tokens left waiting by one-token forwards (generation's deferred compaction) are scored and then
    inserted like one chunk of the same tokens (exact with reduce='mean'), also while the score buffer
    still grows: a short prompt has never filled budget + stride slots."""
    from longread.engine import BatchEngine

    ids, extra = stream(prompt, seed=3), [3, 50, 7, 9]
    with torch.inference_mode():
        states = []
        for deferred in (True, False):
            policy = make_policy("cascading", budget=24, sink=4, cascades=2, reduce="mean")
            eng = BatchEngine(tiny_llama, policy, rows=1, stride=4)
            s = eng.open()
            for i in range(0, prompt, 4):
                eng.forward([s], [ids[i : i + 4]])
            if deferred:
                for t in extra:
                    eng.forward([s], [[t]], defer=True)
            else:
                eng.forward([s], [extra], defer=True)
            waiting = s.policy.scores[..., : s.policy.length + s.policy.pending].clone()
            eng.flush(s)
            states.append((waiting, eng.kv.positions(s.row).clone()))
    (a, kept_a), (b, kept_b) = states
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-9)
    assert torch.equal(kept_a, kept_b)


def test_ema_update_by_hand():
    policy = Cascading(budget=9, sink=1, cascades=2, beta=0.5)
    policy.bind(1, 1)  # one KV head read by two query heads
    torch.testing.assert_close(policy.query_weights(2, torch.device("cpu")), torch.tensor([0.25, 0.5]))
    policy.observe(torch.tensor([[[0.2, 0.4], [0.3, 0.1]]]), n_new=2)  # max over the group: [0.3, 0.4]
    assert policy.select(2, torch.arange(2).view(1, 1, 2)) is None
    policy.observe(torch.tensor([[[0.1, 0.2, 0.5], [0.0, 0.6, 0.1]]]), n_new=1)  # max: [0.1, 0.6, 0.5]
    policy.select(3, torch.arange(3).view(1, 1, 3))
    # 0.5^1 * [0.3, 0.4] + [0.1, 0.6], and the new token starts at its own 0.5
    torch.testing.assert_close(policy.scores[0, 0, :3], torch.tensor([0.25, 0.8, 0.5]))

    mean = Cascading(budget=9, sink=1, cascades=2, beta=0.5, reduce="mean")
    mean.bind(1, 1)
    mean.observe(torch.tensor([[[0.2, 0.4], [0.3, 0.1]]]), n_new=2)
    torch.testing.assert_close(mean.scores[0, 0, :2], torch.tensor([0.25, 0.25]))


def test_column_sums_by_hand():
    # One head, D = 1, scale 1: query 0 sees key 0 only; query 1 sees logits [0, ln 3] -> p = [1/4, 3/4].
    query = torch.tensor([0.0, 1.0]).view(1, 1, 2, 1)
    key = torch.tensor([0.0, float(torch.log(torch.tensor(3.0)))]).view(1, 1, 2, 1)
    sums = column_sums(query, key, None, 1.0, torch.tensor([0.25, 0.5]))
    torch.testing.assert_close(sums, torch.tensor([[0.25 + 0.5 * 0.25, 0.5 * 0.75]]))


@pytest.mark.parametrize("block", [3, 16, 4096])
@pytest.mark.parametrize("queries,keys", [(1, 30), (7, 7), (9, 40)])
@pytest.mark.parametrize("mask_kind", ["none", "bool", "float"])
def test_column_sums_equal_eager_softmax(block, queries, keys, mask_kind):
    gen = torch.Generator().manual_seed(queries * keys + block)
    hq, hkv, d = 6, 2, 8
    query = torch.randn(1, hq, queries, d, generator=gen) * 2
    key = torch.randn(1, hkv, keys, d, generator=gen) * 2
    weights = torch.rand(queries, generator=gen)
    causal = torch.arange(keys)[None, :] <= torch.arange(queries)[:, None] + keys - queries  # (S, K)
    visible = causal & (torch.rand(queries, keys, generator=gen) > 0.3)
    visible[:, 0] = True
    mask = {"none": None, "bool": visible[None, None], "float": torch.where(visible, 0.0, -1e30)[None, None]}
    expected_visible = causal if mask_kind == "none" else visible
    logits = query @ key.repeat_interleave(hq // hkv, dim=1).transpose(-1, -2) * d**-0.5  # (1, Hq, S, K)
    probs = torch.softmax(logits.masked_fill(~expected_visible, float("-inf")), dim=-1)[0]
    expected = (weights[None, :, None] * probs).sum(1)
    got = column_sums(query, key, mask[mask_kind], None, weights, block=block)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


class Collect:
    def __init__(self) -> None:
        self.sums: dict[int, torch.Tensor] = {}

    def observe(self, layer: int, scores: torch.Tensor, n_new: int) -> None:
        self.sums[layer] = scores


def test_model_attention_output_and_scores_match_eager():
    scored = tiny_model(seed=3)
    eager = tiny_model(seed=3, attn_implementation="eager")
    plain = tiny_model(seed=3)
    assert use_score_attention(scored) == SDPA_NAME
    ids = stream(24, seed=5)[None]
    caches = [DynamicCache(config=m.config) for m in (scored, eager, plain)]
    with torch.inference_mode():
        for m, cache in zip((scored, eager, plain), caches):
            m(ids[:, :15], cache=cache, use_cache=True)
        collect = Collect()
        with record_scores(collect, block=4):
            out = scored(ids[:, 15:], cache=caches[0], use_cache=True)
        ref = eager(ids[:, 15:], cache=caches[1], use_cache=True, output_attentions=True)
        sdpa = plain(ids[:, 15:], cache=caches[2], use_cache=True)
    assert torch.equal(out.logits, sdpa.logits), "the score path must not change the SDPA output"
    assert sorted(collect.sums) == list(range(scored.config.num_hidden_layers))
    for layer, probs in enumerate(ref.attentions):  # (1, Hq, 9, 24)
        torch.testing.assert_close(collect.sums[layer], probs[0].sum(1), rtol=1e-5, atol=1e-6)


def test_recorded_scores_weigh_queries_by_a_policys_query_weights():
    """``record_scores(..., query_weights=policy.query_weights)``: column sums weighted per query."""
    scored, eager = tiny_model(seed=3), tiny_model(seed=3, attn_implementation="eager")
    use_score_attention(scored)
    policy = Cascading(budget=40, sink=1, cascades=2, beta=0.5)
    assert make_policy("lacache", budget=48).query_weights(9, torch.device("cpu")) is None  # the default
    ids = stream(24, seed=5)[None]
    caches = [DynamicCache(config=m.config) for m in (scored, eager)]
    with torch.inference_mode():
        for m, cache in zip((scored, eager), caches):
            m(ids[:, :15], cache=cache, use_cache=True)
        collect = Collect()
        with record_scores(collect, block=4, query_weights=policy.query_weights):
            scored(ids[:, 15:], cache=caches[0], use_cache=True)
        ref = eager(ids[:, 15:], cache=caches[1], use_cache=True, output_attentions=True)
    weights = policy.query_weights(9, torch.device("cpu"))
    for layer, probs in enumerate(ref.attentions):  # (1, Hq, 9, 24)
        expected = (weights[None, :, None] * probs[0]).sum(1)
        torch.testing.assert_close(collect.sums[layer], expected, rtol=1e-5, atol=1e-6)


def test_scores_off_outside_a_recording():
    model = tiny_model(seed=3)
    use_score_attention(model)
    collect = Collect()
    model(stream(8)[None])
    assert collect.sums == {}


def test_flash_attention_is_refused_where_the_kernel_cannot_run():
    # The score twin itself runs anywhere (tests/test_flash_emulated.py drives it on CPU); the kernel
    # needs CUDA and half precision, so loading a model for it elsewhere fails early with the fix.
    from longread.models import load_model

    with pytest.raises(ValueError, match="needs a CUDA device; use attn_implementation='sdpa'"):
        load_model("unused", device="cpu", attn_implementation="flash_attention_2")
    with pytest.raises(ValueError, match="needs dtype='bfloat16' or 'float16'"):
        load_model("unused", device="cuda", dtype="float32", attn_implementation="flash_attention_2")
    model = tiny_model(seed=3)
    layer = model.model.layers[0].self_attn
    q = torch.zeros(1, 4, 2, 16)  # (B, Hq, T, D)
    k = torch.zeros(1, 2, 2, 16)  # (B, Hkv, T, D)
    out, _ = sdpa_with_scores(layer, q, k, k, None, scaling=0.25)
    assert out.shape == (1, 2, 4, 16)  # (B, T, Hq, D), as transformers' attention functions return


def test_unsupported_attention_implementation_is_refused():
    model = tiny_model(seed=3)
    model.config._attn_implementation_internal = "flex_attention"
    with pytest.raises(ValueError, match="cannot report attention scores"):
        use_score_attention(model)


def test_select_without_scores_is_refused():
    policy = Cascading(budget=12, sink=2, cascades=2)
    policy.bind(2, 1)
    with pytest.raises(RuntimeError, match="no attention scores reached the policy"):
        policy.select(5, torch.arange(5).expand(2, 1, 5))


# ------------------------------------------------------------------ configuration
@pytest.mark.parametrize(
    "params,match",
    [
        (
            {"budget": 6, "sink": 4, "cascades": 4},
            r"budget - sink = 2 slots cannot give cascades=4 sub-caches a slot each; use budget >= 8 ",
        ),
        ({"budget": 20, "sink": 4, "cascades": 0}, "cascades=0 must be >= 1"),
        ({"budget": 20, "sink": 4, "beta": 1.0}, r"beta=1.0 must be in \(0, 1\)"),
        ({"budget": 20, "sink": 4, "reduce": "median"}, "reduce='median' must be 'max'"),
        ({"budget": 4, "sink": 4}, "sink=4 leaves no room"),
        ({"budget": 20, "window": 4}, "cascading: .*window"),
        ({"budget": 20, "beta": "1e-4"}, r"beta='1e-4' must be a number .*got str"),
        ({"budget": 20, "cascades": 2.0}, "cascades=2.0 must be a whole number"),
    ],
)
def test_bad_configs_name_the_parameter(params, match):
    with pytest.raises(PolicyConfigError, match=match):
        make_policy("cascading", **params)


def test_state_from_before_unequal_widths_still_loads():
    old = make_policy("cascading", budget=20, sink=4, cascades=4)
    old.bind(2, 2)
    state = {**old.state_dict(), "window": 4}  # snapshots kept the width as state until 4c105f8
    fresh = make_policy("cascading", budget=20, sink=4, cascades=4)
    fresh.bind(2, 2)
    fresh.load_state_dict(state)
    assert fresh._widths == [4, 4, 4, 4] and "window" not in vars(fresh)
    with pytest.raises(KeyError, match="'span' is not part of this policy's state"):
        fresh.load_state_dict({"span": 3})


# ------------------------------------------------------------------ passkey job
class CharTokenizer:
    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [ord(c) for c in text]}


def test_passkey_streams_hide_the_key_at_the_asked_depth():
    from experiments.passkey import INTRO, NEEDLE, QUESTION, PasskeyConfig, build_trials

    cfg = PasskeyConfig(budget=200, multiples=[2, 4], depths=5, samples=2)
    book = [ord("a") + i % 26 for i in range(5000)]
    trials = build_trials(cfg, CharTokenizer(), book)
    assert len(trials) == 2 * 5 * 2
    assert len({t.key for t in trials}) == len(trials)
    for t in trials:
        assert len(t.ids) == t.length == t.multiple * cfg.budget
        needle = NEEDLE.format(key=t.key)
        assert "".join(map(chr, t.ids[t.needle_at : t.needle_at + len(needle)])) == needle
        filler = t.length - len(INTRO) - len(needle) - len(QUESTION)
        depth = (t.needle_at - len(INTRO)) / filler
        assert t.depth_bin / 5 - 1 / filler <= depth <= (t.depth_bin + 1) / 5 + 1 / filler


def test_passkey_scoring():
    from experiments.passkey import score

    assert score(" 12345. Remember", "12345") == (True, 1.0)
    assert score(" 12045", "12345") == (False, 0.8)
    assert score(" 123", "12345") == (False, 0.6)
    assert score(" a passkey", "12345") == (False, 0.0)
