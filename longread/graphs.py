"""Captured forwards: replay the engine's steady-state steps from CUDA graphs instead of launching every
kernel from Python.

Contract:

* A bounded cache holds exactly ``budget`` tokens before every full chunk once a stream is past its first
  ``budget`` tokens, and its buffers are never reallocated. So a forward of ``n`` rows ``[row0, row0 + n)``
  that all hold ``length`` tokens and all feed ``width`` tokens has static shapes *and* static addresses:
  ``StepKey(row0, n, length, width, keep)`` names it completely. ``GraphSteps`` captures such a step the
  second time its key is seen (one-off keys -- a cache filling up -- are never captured) and replays it
  afterwards; a few graphs are kept, least recently used first out.
* What changes between replays goes through static buffers the graph reads: the token ids and, for score
  policies, the query weights. Everything else a step reads (positions, the row layout, cached lengths) is
  a function of its key. Outputs (logits, and the score sums for score policies) are the graph's own
  tensors, overwritten by the next replay: callers copy what they keep.
* Nothing inside a captured step may synchronize with the host (``.item()``, ``nonzero``, a host tensor
  made on the fly): CUDA refuses it during capture. ``tests/test_graphs.py`` checks that on CPU with
  ``RecordedGraphs``, which records the aten ops of the captured step and replays exactly those ops on the
  same tensors (no Python re-run), i.e. a CUDA graph's semantics -- so a value baked in at capture but
  missing from the key shows up there as wrong logits, not only on a GPU.

Why: at batch 1 the engine is host-bound on an H100 (BENCHMARKS.md: 44 ms of GPU work against 96 ms of
host time per two 512-token chunks of an 8B model); a replay costs one launch.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

#: Captured steps kept per engine (a feed step per row block, plus decode steps in "token" compaction).
MAX_GRAPHS = 8


class StepKey(NamedTuple):
    row0: int
    rows: int
    length: int  # cached tokens in every row before the step
    width: int  # tokens fed by every row
    keep: int  # logits_to_keep: 1 (last position) or 0 (all)


class Replayable(Protocol):
    def replay(self) -> None: ...


class GraphBackend(Protocol):
    """Captures ``step`` (warm-up run included) and returns the graph and the outputs its replays fill."""

    def supports(self, device: torch.device) -> bool: ...

    def capture(self, step: Callable[[], Any], device: torch.device) -> tuple[Replayable, Any]: ...


class CudaGraphs:
    """torch.cuda's graphs: warm up on a side stream (lazy initializations, autotuning), then capture."""

    def supports(self, device: torch.device) -> bool:
        return device.type == "cuda"

    def capture(self, step: Callable[[], Any], device: torch.device) -> tuple[Replayable, Any]:
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            step()
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: another thread's CUDA call (a Ray or checkpoint thread) must not void this capture
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            out = step()
        return graph, out


#: aten ops that read a device value on the host (or make one from host data): illegal in CUDA capture.
HOST_SYNC_OPS = {
    "aten::_local_scalar_dense",  # .item(), bool(tensor), .tolist()
    "aten::nonzero",
    "aten::is_nonzero",
    "aten::equal",
    "aten::masked_select",
    "aten::unique_dim",
    "aten::_unique2",
    "aten::lift_fresh",  # torch.tensor(host data): a pageable host-to-device copy on CUDA
}


#: One recorded aten call: the op, its arguments, and the results that are new memory (index, tensor).
RecordedOp = tuple[Any, tuple[Any, ...], dict[str, Any], list[tuple[int, torch.Tensor]]]


class _Recorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[RecordedOp] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = func._schema.name
        if name in HOST_SYNC_OPS:
            raise RuntimeError(
                f"{name} inside a captured step: it synchronizes with the host, which CUDA graph capture "
                "refuses; compute it outside the step or pass it through a static buffer."
            )
        out = func(*args, **kwargs)
        # Which results are new memory: decided from the storages, not the schema ("maybe alias" ops such
        # as reshape copy when they cannot view).
        inputs = {
            t.untyped_storage().data_ptr()
            for t in tree_flatten((args, kwargs))[0]
            if isinstance(t, torch.Tensor)
        }
        fresh = [
            (i, t)
            for i, t in enumerate(tree_flatten(out)[0])
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs
        ]
        self.ops.append((func, args, kwargs, fresh))
        return out


@dataclass
class RecordedGraph:
    """A CUDA graph's semantics on any device: the captured aten ops, re-run on the same tensors."""

    ops: list[RecordedOp] = field(default_factory=list)

    def replay(self) -> None:
        for func, args, kwargs, fresh_outputs in self.ops:
            news, _ = tree_flatten(func(*args, **kwargs))
            for i, old in fresh_outputs:
                # A fresh result goes into the tensor the later captured ops read (a graph's fixed
                # address); views and in-place results alias an argument the re-run op already updated.
                old.copy_(news[i])


class RecordedGraphs:
    """``GraphBackend`` for CPU tests: capture records the step's aten ops (refusing host synchronizations)
    and replay re-runs exactly those, without the Python that produced them."""

    def supports(self, device: torch.device) -> bool:
        return True

    def capture(self, step: Callable[[], Any], device: torch.device) -> tuple[Replayable, Any]:
        step()  # warm-up, as on CUDA
        recorder = _Recorder()
        with recorder:
            out = step()
        return RecordedGraph(recorder.ops), out


@dataclass
class Captured:
    """One captured step: its static inputs, its outputs, and what its kernels read (kept alive)."""

    graph: Replayable
    ids: torch.Tensor  # (n, S) long: token ids, copied in before each replay
    logits: torch.Tensor  # (n, keep or S, V): written by each replay
    weights: torch.Tensor | None  # (n, S) float32 query weights of score policies, copied in
    sums: list[torch.Tensor] | None  # [(L, n, H_q, K)] score sums written by each replay
    held: tuple[Any, ...]  # tensors the graph reads that nobody else holds (positions, row layout)


class GraphSteps:
    """The engine's captured steps, by ``StepKey`` (see the module docstring)."""

    def __init__(self, backend: GraphBackend | None = None, capacity: int = MAX_GRAPHS) -> None:
        self.backend: GraphBackend = backend or CudaGraphs()
        self.capacity = capacity
        self.steps: OrderedDict[StepKey, Captured] = OrderedDict()
        self.sightings: dict[StepKey, int] = {}
        self.captures = 0
        self.replays = 0

    def get(self, key: StepKey) -> Captured | None:
        """The captured step for ``key``, or None (then run eagerly, or ``capture`` when ``ready``)."""
        step = self.steps.get(key)
        if step is not None:
            self.steps.move_to_end(key)
        return step

    def ready(self, key: StepKey) -> bool:
        """Seen before: worth capturing (a key seen once, like a cache filling up, is not)."""
        seen = self.sightings.get(key, 0) + 1
        if len(self.sightings) > 64 * self.capacity:  # one-off keys of long runs: forget them
            self.sightings.clear()
        self.sightings[key] = seen
        return seen >= 2

    def capture(
        self,
        key: StepKey,
        step: Callable[[], torch.Tensor],
        device: torch.device,
        *,
        ids: torch.Tensor,
        weights: torch.Tensor | None,
        sums: list[torch.Tensor] | None,
        held: tuple[Any, ...],
    ) -> Captured:
        graph, logits = self.backend.capture(step, device)
        if len(self.steps) >= self.capacity:
            self.steps.popitem(last=False)
        captured = Captured(graph, ids, logits, weights, sums, held)
        self.steps[key] = captured
        self.captures += 1
        return captured

    def replay(self, step: Captured, ids: torch.Tensor, weights: torch.Tensor | None) -> None:
        """``ids``: the step's token ids on the host, copied into the graph's buffer without a host wait."""
        step.ids.copy_(ids.pin_memory() if step.ids.is_cuda else ids, non_blocking=True)
        if step.weights is not None and weights is not None:
            step.weights.copy_(weights)
        step.graph.replay()
        self.replays += 1

    def clear(self) -> None:
        self.steps.clear()
        self.sightings.clear()
