"""Engine behaviour beyond the policy matrix: generation, snapshots, perplexity accounting, validation."""

from __future__ import annotations

import math

import pytest
import torch

from cache_policies import PolicyConfigError, make_policy
from longread.engine import StreamingEngine
from longread.generation import GenerationSettings


class CharTokenizer:
    """Test double: token i <-> the character chr(32 + i) (vocab 97 covers printable ASCII)."""

    eos_token_id = 96

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) - 32 for c in text]}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(32 + i) for i in ids if not (skip_special_tokens and i == self.eos_token_id))


def engine(model, name="streaming_llm", stride=4, **params):
    if name != "full":
        params.setdefault("budget", 24)
    return StreamingEngine(model, make_policy(name, **params), stride=stride, tokenizer=CharTokenizer())


def test_greedy_generation_matches_full_recomputation(tiny_llama):
    prompt = torch.randint(0, 96, (30,), generator=torch.Generator().manual_seed(3))
    seq = prompt.tolist()
    for _ in range(20):  # reference: re-run the whole sequence for every new token
        seq.append(int(tiny_llama(torch.tensor(seq)[None]).logits[0, -1].argmax()))
    expected = seq[30:]
    eng = engine(tiny_llama, "full", stride=8)
    eng.model.generation_config.eos_token_id = None
    eng.tokenizer.eos_token_id = None
    result = eng.generate(prompt.tolist(), max_new_tokens=20)
    assert result.token_ids == expected
    assert result.stop_reason == "max_new_tokens"


def test_generation_keeps_compacting_within_budget(tiny_llama):
    eng = engine(tiny_llama, "lacache", budget=24, sink=2, span=2)
    eng.feed(torch.randint(0, 96, (100,)))
    eng.tokenizer.eos_token_id = None
    eng.model.generation_config.eos_token_id = None
    result = eng.generate(max_new_tokens=60)
    assert len(result.token_ids) == 60
    assert eng.cache.length <= 24
    assert eng.tokens_seen == 160


def test_stop_strings_and_eos(tiny_llama):
    eng = engine(tiny_llama)
    eng.tokenizer.eos_token_id = None
    eng.model.generation_config.eos_token_id = None
    eng.feed_text("the quick brown fox")
    snap = eng.snapshot()
    free = eng.generate(max_new_tokens=12)
    assert len(free.text) == 12
    stop = free.text[5:7]
    eng.restore(snap)
    cut = eng.generate(max_new_tokens=12, stop=[stop])
    assert cut.stop_reason == "stop_string"
    assert cut.text == free.text[: free.text.find(stop)]
    # The first greedy token as EOS ends generation immediately with no text.
    eng.restore(snap)
    eng.tokenizer.eos_token_id = free.token_ids[0]
    assert eng.generate(max_new_tokens=12).stop_reason == "eos"


def test_sampling_is_seeded_and_topk1_is_greedy(tiny_llama):
    eng = engine(tiny_llama)
    eng.feed(torch.randint(0, 96, (40,)))
    snap = eng.snapshot()
    runs = []
    for seed in (1, 1, 2):
        eng.restore(snap)
        runs.append(eng.generate(max_new_tokens=15, temperature=1.5, seed=seed).token_ids)
    assert runs[0] == runs[1] != runs[2]
    eng.restore(snap)
    greedy = eng.generate(max_new_tokens=15).token_ids
    eng.restore(snap)
    assert eng.generate(max_new_tokens=15, temperature=0.7, top_k=1, seed=5).token_ids == greedy
    eng.restore(snap)
    assert eng.generate(max_new_tokens=15, temperature=0.7, top_p=1e-6, seed=5).token_ids == greedy


def test_snapshot_isolates_continuations(tiny_llama):
    eng = engine(tiny_llama, "lacache", budget=24, sink=2, span=2)
    eng.feed(torch.randint(0, 96, (70,)))
    snap = eng.snapshot()
    before = eng.cache.positions().clone()
    first = eng.generate("question one?", max_new_tokens=10).token_ids
    eng.restore(snap)
    assert torch.equal(eng.cache.positions(), before)
    eng.generate("another, longer question here?", max_new_tokens=10)
    eng.restore(snap)
    assert eng.generate("question one?", max_new_tokens=10).token_ids == first


def test_perplexity_counts_every_prediction_once(tiny_llama):
    ids = torch.randint(0, 96, (101,))
    for stride in (1, 10, 64, 200):
        eng = engine(tiny_llama, "full", stride=stride)
        nll = torch.cat(list(eng.nll(ids)))
        assert nll.numel() == 100
    logits = tiny_llama(ids[None]).logits[0, :-1]
    expected = torch.nn.functional.cross_entropy(logits, ids[1:]).item()
    eng.reset()
    assert math.isclose(math.log(eng.perplexity(ids)), expected, rel_tol=1e-4)


def test_reset_starts_a_new_stream(tiny_llama):
    eng = engine(tiny_llama, "lacache", budget=24, sink=2, span=2)
    ids = torch.randint(0, 96, (80,))
    first = torch.cat([eng.forward_chunk(c) for c in eng.chunks(ids)])
    eng.reset()
    again = torch.cat([eng.forward_chunk(c) for c in eng.chunks(ids)])
    torch.testing.assert_close(first, again)


@pytest.mark.parametrize(
    "name,params,match",
    [
        ("nope", {}, "unknown cache policy"),
        ("streaming_llm", {"budget": 0}, "budget=0"),
        ("streaming_llm", {"budget": 8, "sink": 8}, "sink=8"),
        ("streaming_llm", {"budget": 8, "span": 3}, "unexpected keyword"),
    ],
)
def test_policy_validation_messages(name, params, match):
    with pytest.raises(PolicyConfigError, match=match):
        make_policy(name, **params)


def test_engine_rejects_oversized_chunks(tiny_llama):
    eng = engine(tiny_llama, stride=4)
    with pytest.raises(ValueError, match=r"1\.\.4 token ids"):
        eng.forward_chunk(torch.arange(5))


def _memory_rounds() -> None:
    """Snapshot, restore and their bytes (what checkpoints save and load), many times over; prints the RSS
    growth, the size of one state copy, and how many tensors only reference cycles held (JSON)."""
    import gc
    import json

    import psutil
    from conftest import tiny_model

    from longread.engine import Snapshot

    torch.set_num_threads(1)
    model = tiny_model("llama", hidden_size=256, num_attention_heads=8, num_key_value_heads=8)
    eng = StreamingEngine(model, make_policy("streaming_llm", budget=4096, sink=4), stride=256)
    eng.feed(torch.randint(0, 96, (4096,), generator=torch.Generator().manual_seed(0)))
    kept = eng.snapshot()
    copy_mb = sum(t.nbytes for t in kept.cache.values() if isinstance(t, torch.Tensor)) / 2**20

    def round_trip() -> None:
        snap = eng.snapshot()
        eng.feed(torch.randint(0, 96, (16,)))
        eng.restore(Snapshot.from_bytes(snap.to_bytes(), eng.prototype))
        eng.restore(kept)

    process = psutil.Process()
    gc.collect()
    gc.disable()  # whatever only a cycle holds stays alive now: a leak through cycles would show
    for _ in range(3):
        round_trip()
    before = process.memory_info().rss / 2**20
    for _ in range(30):
        round_trip()
    grown = process.memory_info().rss / 2**20 - before
    gc.set_debug(gc.DEBUG_SAVEALL)
    gc.collect()
    cyclic = sum(isinstance(o, torch.Tensor) for o in gc.garbage)
    print(json.dumps({"grown_mb": grown, "copy_mb": copy_mb, "cyclic_tensors": cyclic}))


def test_snapshots_and_restores_do_not_grow_memory():
    """30 rounds of snapshot / restore / bytes round trip in a fresh process started the way the pipeline
    starts its actors (``pipeline.cluster.memory.ALLOCATOR_ENV``): RSS stays flat and nothing is left to the
    cycle collector. (With glibc's default dynamic mmap threshold the same rounds grow RSS by one to four
    copies of the state: freed, but fragmented in the heap; BENCHMARKS.md, "Stream-worker memory".)"""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from pipeline.cluster.memory import ALLOCATOR_ENV

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, **ALLOCATOR_ENV, "PYTHONPATH": f"{root}{os.pathsep}{root / 'tests'}"}
    code = "import test_engine; test_engine._memory_rounds()"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["copy_mb"] > 30  # one leaked copy per round would be plain to see
    assert result["cyclic_tensors"] == 0, "tensors were held only by reference cycles"
    assert result["grown_mb"] < result["copy_mb"] / 2, result


@pytest.mark.parametrize("name", ["streaming_llm", "lacache", "cascading"])
def test_generation_compacts_once_per_stride_like_feeding_chunks(tiny_llama, name):
    """decode_compaction="chunk": generated tokens wait in the stride's spare slots and are compacted
    together, so greedy generation equals feeding the same tokens in chunks of `stride` -- with a
    compaction per chunk, not per token, and never more than budget + stride slots."""
    params = {"lacache": {"span": 2}, "cascading": {"cascades": 2}}.get(name, {})
    ids = torch.randint(0, 96, (50,), generator=torch.Generator().manual_seed(8))
    eng = engine(tiny_llama, name, stride=4, **params)
    eng.tokenizer.eos_token_id = None
    eng.model.generation_config.eos_token_id = None
    eng.feed(ids)
    before = eng.policy.compactions
    lengths = []
    decoder = eng.decoder(GenerationSettings(max_new_tokens=28))
    while not decoder.done:
        eng.decode([eng.stream], [decoder], feed_last=True)
        lengths.append(eng.cache.length)
    assert max(lengths) <= 24 + 4 and eng.policy.compactions - before <= 28 // 4 + 1
    generated = decoder.tokens
    ref = engine(tiny_llama, name, stride=4, **params)
    ref.feed(ids)
    first = int(ref.last_logits.argmax())
    logits = torch.cat([ref.forward_chunk(torch.tensor(generated[i : i + 4])) for i in range(0, 28, 4)])
    assert [first, *logits[:-1].argmax(-1).tolist()] == generated
