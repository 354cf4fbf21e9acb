"""Stream programs on the single-stream engine: requests, results, and an untouched stream after Ask."""

from __future__ import annotations

import pytest
import torch

from cache_policies import make_policy
from longread.engine import StreamingEngine
from longread.generation import GenerationSettings
from longread.scheduler import Ask, AskMany, Feed, Inspect, run_program


def program(ids: list[int]):
    yield Feed(ids[:50])
    before = yield Inspect()
    settings = GenerationSettings(max_new_tokens=8)
    first = yield Ask([3, 4, 5], settings)
    again = yield AskMany([[3, 4, 5], [3, 4, 5]], settings)
    after = yield Inspect()
    yield Feed(ids[50:])
    end = yield Inspect()
    return before, first, again, after, end


def test_program_requests(tiny_llama):
    tiny_llama.generation_config.eos_token_id = None
    ids = torch.randint(0, 97, (90,), generator=torch.Generator().manual_seed(0)).tolist()
    engine = StreamingEngine(tiny_llama, make_policy("streaming_llm", budget=32), stride=8)
    engine.feed(ids)  # state left by an earlier stream: run_program must start afresh
    before, first, again, after, end = run_program(engine, program(ids))
    assert before.tokens_seen == 50 and before.cache_tokens == 32
    assert [r.token_ids for r in again] == [first.token_ids, first.token_ids]
    assert len(first.token_ids) == 8 and first.stop_reason == "max_new_tokens"
    assert after == before  # asking never changes the stream
    assert end.tokens_seen == 90


def teacher_forced(engine: StreamingEngine, snap, prompt: list[int], answer: list[int]) -> list[int]:
    """Greedy tokens for ``prompt + answer`` fed as ONE chunk from ``snap`` (no compaction inside it)."""
    engine.restore(snap)
    logits = engine.forward_chunk(torch.tensor(prompt + answer[:-1]))
    assert logits is not None
    return logits[len(prompt) - 1 :].argmax(-1).tolist()


def test_a_prompt_evicts_nothing_of_the_document_while_it_fits_in_the_stride(tiny_llama):
    """Asking leaves the document's kept budget whole: the prompt waits in the spare slots with the answer,
    so every answer token equals the greedy choice with prompt + answer fed as one chunk after the
    document's compacted state (a prompt compacted on its own would have evicted len(prompt) document
    tokens first). Same for the scheduler's Ask(Many) (in place and in forked rows) and generate()."""
    tiny_llama.generation_config.eos_token_id = None
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 97, (120,), generator=gen).tolist()
    prompt = torch.randint(0, 97, (20,), generator=gen).tolist()
    settings = GenerationSettings(max_new_tokens=10)
    for name in ("streaming_llm", "lacache", "cascading"):
        params = {"cascading": {"cascades": 2}, "lacache": {"span": 2}}.get(name, {})
        engine = StreamingEngine(tiny_llama, make_policy(name, budget=36, **params), stride=32)
        engine.feed(ids)
        snap = engine.snapshot()

        def ask():
            yield Feed(ids)
            one = yield Ask(prompt, settings)
            many = yield AskMany([prompt, prompt], settings)
            return one, many

        one, many = run_program(engine, ask())
        engine.restore(snap)
        direct = engine.generate(prompt, settings=settings)
        for result in (one, *many, direct):
            assert len(result.token_ids) == 10
            assert result.token_ids == teacher_forced(engine, snap, prompt, result.token_ids), name
        # and the stream goes on within its budget afterwards
        engine.restore(snap)
        engine.generate(prompt, settings=settings)
        assert engine.cache.length <= 36
    with pytest.raises(ValueError, match="defer has 2 flags for 1 streams"):
        engine.forward([engine.stream], [[1]], defer=[True, False])
