"""Batched streaming: every stream inside a batch behaves exactly as it does alone.

Streams of different lengths join at different times, feed chunks of different sizes (a forward mixes
1-token and full chunks), leave mid-way and hand their rows to new streams; each stream's logits and kept
positions must equal the single-stream engine's for the same chunks, and no stream may exceed its budget.
"""

from __future__ import annotations

import random

import pytest
import torch
from conftest import tiny_model
from test_policy_matrix import MATRIX_PARAMS

from cache_policies import POLICIES, make_policy
from longread.engine import BatchEngine, StreamingEngine
from longread.generation import GenerationSettings
from longread.scheduler import AskMany, Feed, Inspect, Scheduler, run_program

BUDGET, STRIDE = 40, 12


def build(name: str, budget: int | None = BUDGET):
    params = dict(MATRIX_PARAMS[name])
    if name != "full":
        params["budget"] = budget
    return make_policy(name, **params)


def plan(seed: int, streams: int = 5) -> list[dict]:
    """Per stream: its tokens, the tick it joins, and its chunk sizes (1..STRIDE, decode-like 1s included)."""
    rng = random.Random(seed)
    out = []
    for i in range(streams):
        length = rng.randint(30, 160)
        sizes, left = [], length
        while left:
            size = min(left, rng.choice([1, 1, 3, 7, STRIDE]))
            sizes.append(size)
            left -= size
        ids = torch.randint(0, 97, (length,), generator=torch.Generator().manual_seed(seed * 10 + i))
        out.append({"ids": ids, "join": rng.randint(0, 12), "sizes": sizes, "skip": rng.random() * 0.3})
    return out


def alone(model, name: str, stream: dict):
    """Reference: one StreamingEngine, the same chunks in order; logits and positions after each chunk."""
    engine = StreamingEngine(model, build(name), stride=STRIDE)
    logits, positions, start = [], [], 0
    for size in stream["sizes"]:
        logits.append(engine.forward_chunk(stream["ids"][start : start + size]))
        positions.append(engine.cache.positions().clone())
        start += size
    return logits, positions


def batched(model, name: str, streams: list[dict], rows: int, seed: int, rope_mode: str = "delta"):
    """All streams through one BatchEngine with ``rows`` rows: joining, skipping ticks, leaving."""
    engine = BatchEngine(model, build(name), rows=rows, stride=STRIDE, rope_mode=rope_mode)
    rng = random.Random(seed)
    state = [{"next": 0, "start": 0, "logits": [], "positions": [], "handle": None} for _ in streams]
    tick = 0
    while any(st["next"] < len(s["sizes"]) for st, s in zip(state, streams)):
        active, chunks = [], []
        for i, (st, s) in enumerate(zip(state, streams)):
            if st["next"] >= len(s["sizes"]) or tick < s["join"]:
                continue
            if st["handle"] is None:
                if engine.free_rows == 0:
                    continue  # waits for a row (continuous batching)
                st["handle"] = engine.open()
            if rng.random() < s["skip"]:
                continue  # not in this forward
            size = s["sizes"][st["next"]]
            active.append(i)
            chunks.append(s["ids"][st["start"] : st["start"] + size])
        if active:
            out = engine.forward([state[i]["handle"] for i in active], chunks, logits="all")
            for i, logits in zip(active, out):
                st, s = state[i], streams[i]
                handle = st["handle"]
                st["logits"].append(logits)
                st["positions"].append(engine.kv.positions(handle.row).clone())
                if handle.policy.budget is not None:
                    assert engine.kv.length(handle.row) <= handle.policy.budget
                st["start"] += s["sizes"][st["next"]]
                st["next"] += 1
                if st["next"] == len(s["sizes"]):
                    engine.close(handle)  # leaves mid-way: its row goes to the next stream
        tick += 1
    return state


@pytest.mark.parametrize("model_type", ["llama", "mistral", "qwen2"])
@pytest.mark.parametrize("name", sorted(POLICIES))
def test_batch_streams_equal_single_streams(name, model_type):
    model = tiny_model(model_type)
    streams = plan(seed=7)
    got = batched(model, name, streams, rows=3, seed=1)
    for i, s in enumerate(streams):
        ref_logits, ref_positions = alone(model, name, s)
        assert len(got[i]["logits"]) == len(ref_logits)
        for step, (a, b) in enumerate(zip(got[i]["logits"], ref_logits)):
            torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4, msg=f"stream {i} chunk {step}")
        for step, (a, b) in enumerate(zip(got[i]["positions"], ref_positions)):
            assert torch.equal(a, b), f"stream {i}: kept positions differ after chunk {step}"


@pytest.mark.parametrize("name", ["streaming_llm", "cascading"])
def test_batch_read_rope_mode(name):
    """The rotate-on-read pos-shift gives the same batched logits as rotate-by-delta."""
    model = tiny_model("llama")
    streams = plan(seed=3, streams=3)
    read = batched(model, name, streams, rows=2, seed=2, rope_mode="read")
    for i, s in enumerate(streams):
        ref_logits, ref_positions = alone(model, name, s)
        for a, b in zip(read[i]["logits"], ref_logits):
            torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)
        for a, b in zip(read[i]["positions"], ref_positions):
            assert torch.equal(a, b)


def qa_program(ids: list[int], questions: list[list[int]], settings: GenerationSettings):
    yield Feed(ids)
    before = yield Inspect()
    answers = yield AskMany(questions, settings)
    after = yield Inspect()
    assert after == before, "answering must leave the stream as it was"
    return [a.token_ids for a in answers], [a.stop_reason for a in answers]


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_batch_scheduler_programs_equal_one_at_a_time(name):
    """Many programs with continuous batching (3 at once on 7 rows, questions forked) give the answers
    each program gets alone on the single-stream engine."""
    model = tiny_model("llama")
    model.generation_config.eos_token_id = None
    settings = [
        GenerationSettings(max_new_tokens=9),
        GenerationSettings(max_new_tokens=6, repetition_penalty=1.3, no_repeat_ngram_size=2),
        GenerationSettings(max_new_tokens=7, temperature=0.8, top_k=20, seed=3),
    ]
    gen = torch.Generator().manual_seed(11)
    jobs = []
    for i in range(6):
        ids = torch.randint(0, 97, (40 + 23 * i,), generator=gen).tolist()
        questions = [torch.randint(0, 97, (3 + q,), generator=gen).tolist() for q in range(1 + i % 3)]
        jobs.append((ids, questions, settings[i % 3]))
    single = StreamingEngine(model, build(name), stride=STRIDE)
    expected = [run_program(single, qa_program(*job)) for job in jobs]
    engine = BatchEngine(model, build(name), rows=7, stride=STRIDE)
    finished = list(Scheduler(engine, max_streams=3).run(qa_program(*job) for job in jobs))
    assert sorted(f.index for f in finished) == list(range(len(jobs)))
    for f in finished:
        assert f.error is None, f.error
        assert f.value == expected[f.index], f"program {f.index}"
    assert engine.free_rows == engine.rows


def failing_program(ids: list[int]):
    yield Feed(ids)
    yield Feed([10_000])  # outside the vocabulary: raised inside this program only
    return "unreachable"


def test_batch_one_bad_stream_does_not_fail_the_others():
    model = tiny_model("llama")
    engine = BatchEngine(model, build("streaming_llm"), rows=2, stride=STRIDE)
    good = [torch.randint(0, 97, (50,)).tolist() for _ in range(3)]
    programs = [failing_program(good[0]), qa_program(good[1], [[1, 2]], GenerationSettings(max_new_tokens=3))]
    programs.append(qa_program(good[2], [[3]], GenerationSettings(max_new_tokens=2)))
    finished = {f.index: f for f in Scheduler(engine).run(programs)}
    assert isinstance(finished[0].error, ValueError) and "vocabulary" in str(finished[0].error)
    assert finished[1].error is None and finished[2].error is None
    assert engine.free_rows == 2


def test_batch_snapshot_bytes_round_trip():
    """A stream saved to bytes and loaded into another engine continues exactly as the original."""
    model = tiny_model("llama")
    ids = torch.randint(0, 97, (120,), generator=torch.Generator().manual_seed(5))
    for name in ("lacache", "cascading"):
        a = StreamingEngine(model, build(name), stride=STRIDE)
        a.feed(ids[:70])
        data = a.snapshot().to_bytes()
        b = BatchEngine(model, build(name), rows=2, stride=STRIDE)
        other = b.open()
        b.forward([other], [ids[:5]])  # another stream in the engine, to be left alone
        stream = b.open()
        from longread.engine import Snapshot

        b.restore(stream, Snapshot.from_bytes(data, b.prototype))
        rest_a = torch.cat([a.forward_chunk(c) for c in a.chunks(ids[70:])])
        rest_b = torch.cat([b.forward([stream], [c], logits="all")[0] for c in a.chunks(ids[70:])])
        torch.testing.assert_close(rest_b, rest_a, atol=1e-6, rtol=1e-5)
        assert torch.equal(b.kv.positions(stream.row), a.cache.positions())


def test_batch_snapshot_refuses_other_policy_settings():
    model = tiny_model("llama")
    a = StreamingEngine(model, build("streaming_llm"), stride=STRIDE)
    a.feed(torch.arange(30))
    from longread.engine import Snapshot

    with pytest.raises(ValueError, match="same policy settings"):
        Snapshot.from_bytes(a.snapshot().to_bytes(), make_policy("streaming_llm", budget=64))


def test_batch_batcher_serves_concurrent_callers():
    """Threads each hand a program to one Batcher (as a Ray actor's concurrent calls do): every caller
    gets its own program's answer, the same as alone, while the programs share forwards."""
    from concurrent.futures import ThreadPoolExecutor

    from longread.scheduler import Batcher

    model = tiny_model("llama")
    model.generation_config.eos_token_id = None
    settings = GenerationSettings(max_new_tokens=5)
    gen = torch.Generator().manual_seed(4)
    jobs = [
        (torch.randint(0, 97, (30 + 11 * i,), generator=gen).tolist(), [[1 + i, 2]], settings)
        for i in range(6)
    ]
    single = StreamingEngine(model, build("lacache"), stride=STRIDE)
    expected = [run_program(single, qa_program(*job)) for job in jobs]
    engine = BatchEngine(model, build("lacache"), rows=6, stride=STRIDE)
    batcher = Batcher(engine, max_streams=3)
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda job: batcher.run(qa_program(*job)), jobs))
    assert got == expected
    assert engine.stats.forwards < sum(len(j[0]) // STRIDE + 1 + 5 for j in jobs)  # streams shared forwards


def test_batch_batcher_survives_an_engine_failure(monkeypatch):
    """A failing forward fails the programs in flight (their callers get the error), and the batcher goes
    on serving the next ones."""
    from longread.scheduler import Batcher

    model = tiny_model("llama")
    engine = BatchEngine(model, build("streaming_llm"), rows=2, stride=STRIDE)
    batcher = Batcher(engine)
    real = engine.forward
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("device lost")
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "forward", flaky)
    with pytest.raises(RuntimeError, match="device lost"):
        batcher.run(qa_program(list(range(40)), [[1, 2]], GenerationSettings(max_new_tokens=3)))
    answers, _ = batcher.run(qa_program(list(range(30)), [[3]], GenerationSettings(max_new_tokens=2)))
    assert len(answers[0]) == 2 and engine.free_rows == 2


def test_batch_engine_edges_defer_flush_snapshot_and_stop_strings():
    """Deferred rows next to a wider chunk make room first; flush works outside inference mode (Cascading's
    score buffers); a snapshot holds its own row's logits, not the whole forward's; a str stop is one
    stop string; a scheduler whose engine has no free row says so instead of spinning."""
    from longread.engine import Snapshot
    from longread.generation import Decoder

    model = tiny_model("llama", vocab_size=3000)
    model.generation_config.eos_token_id = None
    ids = torch.randint(0, 96, (40,), generator=torch.Generator().manual_seed(1))
    engine = BatchEngine(model, build("cascading", budget=24), rows=2, stride=4)
    a, b = engine.open(), engine.open()
    for i in range(0, 40, 4):
        engine.forward([a], [ids[i : i + 4]])
    for t in range(3):  # 27 of 28 slots
        engine.forward([a], [[5 + t]], defer=True)
    engine.forward([a, b], [[9], ids[:4]], defer=True)  # b's 4 tokens pad a's row to 4 slots too
    assert engine.kv.length(a.row) <= engine.kv.capacity
    decoder = engine.decoder(GenerationSettings(max_new_tokens=3))
    while not decoder.done:
        engine.decode([a], [decoder], feed_last=True)
    engine.flush(a)  # outside torch.inference_mode
    assert engine.kv.length(a.row) == 24

    wide = BatchEngine(model, build("streaming_llm"), rows=8, stride=16)
    rows = [wide.open() for _ in range(8)]
    wide.forward(rows, [ids[:16]] * 8, logits="all")
    single = BatchEngine(model, build("streaming_llm"), rows=1, stride=16)
    one = single.open()
    single.forward([one], [ids[:16]])
    wide_bytes, single_bytes = wide.snapshot(rows[0]).to_bytes(), single.snapshot(one).to_bytes()
    assert len(wide_bytes) <= len(single_bytes) + 1024  # not 8 rows x 16 positions x 3000 logits
    restored = Snapshot.from_bytes(wide_bytes, wide.prototype)
    assert restored.last_logits is not None and restored.last_logits.shape == (3000,)

    settings = GenerationSettings(max_new_tokens=50, stop="END")
    assert settings.stop == ("END",)

    class Chars:
        def decode(self, ids, skip_special_tokens=True):
            return "".join(chr(32 + i) for i in ids)

    stopper = Decoder(settings, Chars())
    for ch in "Do it. The END here":
        if stopper.push(ord(ch) - 32):
            break
    assert (stopper.reason, stopper.text) == ("stop_string", "Do it. The ")

    full = BatchEngine(model, build("streaming_llm"), rows=1, stride=4)
    full.open()  # the only row, held outside the scheduler

    def program():
        yield Feed([1, 2, 3])
        return "done"

    with pytest.raises(RuntimeError, match="no free row"):
        run_program(full, program())


@pytest.mark.parametrize(
    ("model_type", "overrides"),
    [
        ("mistral", {"sliding_window": 8}),  # every layer slides
        ("qwen2", {"use_sliding_window": True, "sliding_window": 8, "max_window_layers": 2}),  # mixed
        ("llama", {"attn_implementation": "eager"}),  # eager adds the mask to the scores
    ],
)
def test_batch_uneven_rows_keep_sliding_windows_and_eager_masks(model_type, overrides):
    """A forward whose rows differ in length passes the engine's own 4D mask: it must apply the model's
    sliding window and suit the attention kernel, so each row equals the same tokens in one plain forward."""
    model = tiny_model(model_type, **overrides)
    ids = torch.randint(0, 97, (30,), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        reference = model(ids[None]).logits[0]
        engine = BatchEngine(model, make_policy("full"), rows=2, stride=5)
        one, other = engine.open(), engine.open()
        engine.forward([other], [ids[:3]])  # another length in the same forwards
        out = torch.cat(
            [engine.forward([one, other], [ids[c : c + 5], ids[3 + c // 5 : 4 + c // 5]], logits="all")[0]
             for c in range(0, 30, 5)]
        )  # fmt: skip
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-4)
