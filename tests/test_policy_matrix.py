"""One matrix over every registered policy: the invariants every bounded cache must hold."""

from __future__ import annotations

import pytest
import torch

from cache_policies import POLICIES, make_policy
from longread.engine import StreamingEngine

# Parameters that make each registered policy evict on a short stream of a 4-layer model.
# A policy missing here fails `test_every_policy_is_in_the_matrix`: new policies cannot skip the matrix.
MATRIX_PARAMS: dict[str, dict] = {
    "full": {},
    "streaming_llm": {"sink": 4},
    "lacache": {"sink": 4, "span": 2, "overlap": 0},
    "cascading": {"sink": 4, "cascades": 2},
}
BOUNDED = [name for name in POLICIES if name != "full"]
STREAM = 260
BUDGET = 48


def build(name: str, budget: int | None = BUDGET, **extra) -> object:
    params = dict(MATRIX_PARAMS[name], **extra)
    if name != "full":
        params["budget"] = budget
    return make_policy(name, **params)


def stream_ids(n: int = STREAM, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 97, (n,), generator=torch.Generator().manual_seed(seed))


def run(model, policy, ids, stride, rope_mode="delta", check=None) -> torch.Tensor:
    engine = StreamingEngine(model, policy, stride=stride, rope_mode=rope_mode)
    out = []
    for chunk in engine.chunks(ids):
        out.append(engine.forward_chunk(chunk))
        if check is not None:
            check(engine)
    return torch.cat(out)


def test_every_policy_is_in_the_matrix():
    assert set(POLICIES) <= set(MATRIX_PARAMS), f"add parameters for {set(POLICIES) - set(MATRIX_PARAMS)}"


@pytest.mark.parametrize("stride", [1, 5, 32])
@pytest.mark.parametrize("name", BOUNDED)
def test_budget_never_exceeded_and_memory_fixed(tiny_llama, name, stride):
    policy = build(name)
    nbytes: set[int] = set()

    def check(engine):
        assert engine.cache.length <= BUDGET
        nbytes.add(engine.cache.nbytes())
        for layer in engine.cache.layers:
            assert layer.capacity == BUDGET + stride  # preallocated once, never regrown

    run(tiny_llama, policy, stream_ids(), stride, check=check)
    assert len(nbytes) == 1
    assert policy.stats()["compactions"] > 0


@pytest.mark.parametrize("stride", [1, 7])
@pytest.mark.parametrize("name", BOUNDED)
def test_sinks_kept(tiny_llama, name, stride):
    policy = build(name)

    def check(engine):
        pos = engine.cache.positions()  # (L, H, T)
        for s in range(min(policy.sink, engine.tokens_seen)):
            assert bool((pos == s).any(dim=-1).all()), f"sink {s} lost"
        # Slots stay in stream order for order-preserving policies; every kept token is distinct.
        assert all(len(set(p.tolist())) == p.numel() for p in pos.flatten(0, 1))

    run(tiny_llama, policy, stream_ids(), stride, check=check)


@pytest.mark.parametrize("stride", [1, 6, 64])
@pytest.mark.parametrize("name", list(POLICIES))
def test_budget_covering_stream_equals_full_attention(tiny_llama, name, stride):
    ids = stream_ids(120)
    reference = tiny_llama(ids[None]).logits[0]
    got = run(tiny_llama, build(name, budget=128), ids, stride)
    torch.testing.assert_close(got, reference, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("name", list(POLICIES))
def test_chunked_and_token_by_token_agree_before_eviction(tiny_llama, name):
    """Until the first compaction every stride sees the same context, so logits must match."""
    ids = stream_ids()
    by_token = run(tiny_llama, build(name), ids, 1)
    chunked = run(tiny_llama, build(name), ids, BUDGET)  # first chunk fills the budget exactly
    torch.testing.assert_close(chunked[:BUDGET], by_token[:BUDGET], atol=2e-5, rtol=1e-4)
    if name != "full":  # past the budget, chunking changes what each query sees
        assert not torch.allclose(chunked[BUDGET + 10 :], by_token[BUDGET + 10 :], atol=1e-3)


@pytest.mark.parametrize("stride", [1, 9])
@pytest.mark.parametrize("name", BOUNDED)
def test_rope_delta_and_read_modes_agree(tiny_llama, name, stride):
    ids = stream_ids()
    delta = run(tiny_llama, build(name), ids, stride, rope_mode="delta")
    read = run(tiny_llama, build(name), ids, stride, rope_mode="read")
    torch.testing.assert_close(delta, read, atol=2e-5, rtol=1e-4)


def test_full_cache_memory_grows(tiny_llama):
    sizes = []
    run(tiny_llama, build("full"), stream_ids(2100), 100, check=lambda e: sizes.append(e.cache.nbytes()))
    assert sizes[-1] > sizes[0]


@pytest.mark.parametrize("model_type", ["llama", "mistral", "qwen2", "qwen3", "gemma"])
def test_architectures_stream_exactly(model_type):
    """Every architecture we claim: chunked pos-shift streaming with no eviction equals one forward pass,
    and with eviction the two RoPE implementations agree."""
    from conftest import tiny_model

    model = tiny_model(model_type)
    ids = stream_ids(90)
    torch.testing.assert_close(
        run(model, build("full"), ids, 7), model(ids[None]).logits[0], atol=3e-5, rtol=1e-4
    )
    delta = run(model, build("streaming_llm", budget=32), ids, 5, rope_mode="delta")
    read = run(model, build("streaming_llm", budget=32), ids, 5, rope_mode="read")
    torch.testing.assert_close(delta, read, atol=3e-5, rtol=1e-4)


@pytest.mark.parametrize("name", BOUNDED)
def test_bounded_policies_refuse_bad_budgets_and_sinks_by_name(name):
    """No budget (a spec without one), or a budget/sink that is not a whole number, fails when the policy
    is built, naming the parameter and the fix -- not at the first compaction with a bare assertion."""
    from cache_policies import PolicyConfigError, from_spec, parse_spec

    with pytest.raises(PolicyConfigError, match=rf"{name}: needs a budget .*--budget 512"):
        from_spec(name)
    for params, bad in [({"budget": 48.5}, "budget=48.5"), ({"budget": True}, "budget=True"),
                        ({"budget": 48, "sink": 2.5}, "sink=2.5")]:  # fmt: skip
        with pytest.raises(PolicyConfigError, match=rf"{name}: {bad} must be a whole number"):
            make_policy(name, **{**MATRIX_PARAMS[name], **params})
    with pytest.raises(PolicyConfigError, match=r"'\[1' of 'sink' is not valid YAML"):
        parse_spec(f"{name}:sink=[1")
    assert build("full").params() == {"budget": None}  # the full cache alone needs none
