"""Stream programs on the single-stream engine: requests, results, and an untouched stream after Ask."""

from __future__ import annotations

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
