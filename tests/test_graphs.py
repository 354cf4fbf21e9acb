"""Captured steps (``longread.graphs``): replaying a step from its graph gives the eager step's results.

On CPU the graphs are ``RecordedGraphs``: capture records the step's aten ops and refuses any that would
synchronize with the host (CUDA capture refuses those too); replay re-runs exactly the recorded ops on the
same tensors, without the Python that produced them -- a CUDA graph's semantics. So these tests catch what
breaks a graph on a GPU: a host sync inside the step, and any value baked in at capture that the step key
does not cover (then a replay computes with stale values and the logits differ).
"""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model
from test_policy_matrix import MATRIX_PARAMS

from cache_policies import make_policy
from longread.engine import BatchEngine
from longread.generation import GenerationSettings
from longread.graphs import GraphSteps, RecordedGraphs, StepKey

BUDGET, STRIDE = 40, 12
BOUNDED = ["streaming_llm", "lacache", "cascading"]


def engine_for(model, name: str, rows: int, graphs: bool, **kwargs) -> BatchEngine:
    params = {**MATRIX_PARAMS[name], "budget": BUDGET}
    engine = BatchEngine(model, make_policy(name, **params), rows=rows, stride=STRIDE, **kwargs)
    if graphs:
        engine.cuda_graphs = True
        engine.graphs = GraphSteps(RecordedGraphs())
    return engine


def feed_all(engine: BatchEngine, streams, chunks: list[list[torch.Tensor]], logits: str):
    out, positions = [], []
    for step in chunks:
        got = engine.forward(streams, step, logits=logits)  # type: ignore[arg-type]
        out.append([g.clone() for g in got])
        positions.append([engine.kv.positions(s.row).clone() for s in streams])
        for s in streams:
            assert engine.kv.length(s.row) <= BUDGET
    return out, positions


@pytest.mark.parametrize("rope_mode", ["delta", "read"])
@pytest.mark.parametrize("logits", ["last", "all"])
@pytest.mark.parametrize("name", BOUNDED)
def test_batch_graph_feed_equals_eager(name, logits, rope_mode):
    """Full chunks in steady state replay from a captured graph; logits and kept positions equal eager."""
    model = tiny_model("llama")
    gen = torch.Generator().manual_seed(3)
    rows = 2
    chunks = [[torch.randint(0, 97, (STRIDE,), generator=gen) for _ in range(rows)] for _ in range(12)]
    eager = engine_for(model, name, rows, graphs=False, rope_mode=rope_mode)
    graphed = engine_for(model, name, rows, graphs=True, rope_mode=rope_mode)
    ref, ref_pos = feed_all(eager, [eager.open() for _ in range(rows)], chunks, logits)
    got, got_pos = feed_all(graphed, [graphed.open() for _ in range(rows)], chunks, logits)
    assert graphed.graphs.captures == 1, "one steady-state feed step: one graph"
    assert graphed.graphs.replays >= 6, "the steady state must replay, not run eagerly"
    for step, (a_rows, b_rows) in enumerate(zip(got, ref)):
        for a, b in zip(a_rows, b_rows):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=f"chunk {step}")
    for a_rows, b_rows in zip(got_pos, ref_pos):
        for a, b in zip(a_rows, b_rows):
            assert torch.equal(a, b)


@pytest.mark.parametrize("name", BOUNDED)
def test_batch_graph_decode_equals_eager(name):
    """One-token steps with per-token compaction replay too; generated tokens equal eager decoding."""
    model = tiny_model("llama")
    gen = torch.Generator().manual_seed(5)
    prompts = [torch.randint(0, 97, (70,), generator=gen) for _ in range(2)]
    settings = GenerationSettings(max_new_tokens=20)

    def run(graphs: bool) -> list[list[int]]:
        engine = engine_for(model, name, 2, graphs=graphs, decode_compaction="token")
        streams = [engine.open() for _ in prompts]
        for start in range(0, 70, STRIDE):
            engine.forward(streams, [p[start : start + STRIDE] for p in prompts])
        decoders = [engine.decoder(settings) for _ in streams]
        for d in decoders:
            d.eos = set()
        while not all(d.done for d in decoders):
            engine.decode(streams, decoders)
        if graphs:
            assert engine.graphs.replays >= 10
        return [list(d.tokens) for d in decoders]

    assert run(graphs=True) == run(graphs=False)


def test_batch_graph_not_used_for_uneven_or_unbounded_steps():
    """Rows of different lengths, partial chunks and the full cache run eagerly (their shapes change)."""
    model = tiny_model("llama")
    engine = engine_for(model, "streaming_llm", 2, graphs=True)
    a, b = engine.open(), engine.open()
    for _ in range(6):
        engine.forward([a, b], [list(range(STRIDE)), list(range(5))])
    assert engine.graphs.captures == 0
    full = BatchEngine(model, make_policy("full"), rows=1, stride=STRIDE, cuda_graphs=True)
    full.graphs = GraphSteps(RecordedGraphs())
    s = full.open()
    for _ in range(4):
        full.forward([s], [list(range(STRIDE))])
    assert full.graphs.captures == 0


def test_recorded_graph_replays_ops_not_python():
    """The emulator itself: a replay sees new contents of static inputs, not new Python values, and a
    host synchronization inside capture is refused."""
    x = torch.ones(3)
    scale = 2.0
    backend = RecordedGraphs()
    graph, out = backend.capture(lambda: x * scale + 1, torch.device("cpu"))
    x.copy_(torch.tensor([1.0, 2.0, 3.0]))
    scale = 10.0  # a Python value: baked in at capture, as on CUDA
    graph.replay()
    assert out.tolist() == [3.0, 5.0, 7.0]
    with pytest.raises(RuntimeError, match="_local_scalar_dense"):
        backend.capture(lambda: x * float(x.sum()), torch.device("cpu"))


def test_graph_steps_capture_on_second_sighting_and_evict():
    steps = GraphSteps(RecordedGraphs(), capacity=2)
    keys = [StepKey(0, 1, 40, 12, 1), StepKey(0, 1, 41, 1, 1), StepKey(0, 2, 40, 12, 1)]
    assert not steps.ready(keys[0]) and steps.ready(keys[0])
    ids = torch.zeros(1, 1, dtype=torch.long)
    for key in keys:
        steps.capture(key, lambda: ids + 1, torch.device("cpu"), ids=ids, weights=None, sums=None, held=())
    assert list(steps.steps) == keys[1:], "least recently used first out"


def test_batch_graph_capture_failure_falls_back_to_eager(caplog):
    """A capture that fails (a kernel CUDA cannot capture) costs the speed-up, never the results."""

    class Refusing(RecordedGraphs):
        def capture(self, step, device):
            step()  # the warm-up ran, as on CUDA, before the capture failed
            raise RuntimeError("operation not permitted when stream is capturing")

    model = tiny_model("llama")
    chunks = [[list(range(i, i + STRIDE))] for i in range(8)]
    eager = engine_for(model, "cascading", 1, graphs=False)
    refusing = engine_for(model, "cascading", 1, graphs=True)
    refusing.graphs = GraphSteps(Refusing())
    ref, _ = feed_all(eager, [eager.open()], chunks, "last")
    with caplog.at_level("WARNING", logger="longread.engine"):
        got, _ = feed_all(refusing, [refusing.open()], chunks, "last")
    assert not refusing.cuda_graphs and "runs every step eagerly" in caplog.text
    for a, b in zip(got, ref):
        torch.testing.assert_close(a[0], b[0], atol=1e-6, rtol=1e-6)


def test_batch_graph_engine_is_freed_without_the_cycle_collector():
    """Captured steps hold tensors, not the engine: a dropped engine's cache is freed at once."""
    import gc
    import weakref

    model = tiny_model("llama")
    engine = engine_for(model, "cascading", 1, graphs=True)
    s = engine.open()
    for i in range(8):
        engine.forward([s], [list(range(i, i + STRIDE))])
    assert engine.graphs.replays > 0
    ref = weakref.ref(engine.kv.buffers)
    gc.disable()
    try:
        del engine, s
        assert ref() is None
    finally:
        gc.enable()
