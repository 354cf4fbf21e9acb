"""The streaming engine: a Hugging Face causal LM over unbounded token streams at fixed memory.

Contract:

* ``BatchEngine`` runs up to ``rows`` independent streams on one model. Each ``Stream`` owns a row of the
  shared preallocated cache (``longread.cache.BatchCache``: ``(L, rows, H, budget + stride, D)``) and its own
  policy object (per-stream state: LaCache's cursor, Cascading's score EMAs). Streams open, close and fork
  at any time (continuous batching: a freed row takes the next stream).
* ``forward(streams, chunks)`` runs ONE model forward for several streams: each feeds a chunk of at most
  ``stride`` tokens that attends to its own cache plus itself (causally), whatever the other rows hold;
  then each stream's policy compacts its row to at most ``budget`` tokens, all rows and layers in one
  gather per layer group, with no host synchronization. A row's logits equal what the same stream gives
  alone (tested for every policy), so batching changes speed, never results.
* Streams of one forward sit in a contiguous block of rows: the engine swaps rows to make it so (a swap
  copies two rows' caches; it happens when a stream moves between the "feeding" and "generating" groups,
  not at every step). So a forward costs the rows it serves plus padding to its longest chunk -- the
  reason callers group chunk-feeding streams and token-generating streams into separate forwards
  (``longread.scheduler`` does), instead of padding every generating stream to a full chunk.
* Positions are pos-shift (``longread.cache``): positions never exceed ``budget + stride``, so any stream
  length works. ``stride=1`` is token-by-token evaluation.
* ``decode`` performs one generation step for several streams (per-stream ``Decoder``: settings, stop
  strings, repetition control, seeds). ``snapshot``/``restore`` copy one stream's whole state (its cache
  row, policy, last logits) so several continuations can start from one streamed document; ``Snapshot``
  round-trips through bytes for checkpoints.
* ``StreamingEngine`` is the single-stream API on the same machinery (one row).
"""

from __future__ import annotations

import copy
import io
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from cache_policies.base import CachePolicy
from longread.attention import (
    ForwardContext,
    ScoreSink,
    Timer,
    forward_context,
    is_flash,
    use_engine_attention,
)
from longread.cache import BatchCache, BatchLayer, RopeMode, to_device
from longread.generation import Decoder, GenerationResult, GenerationSettings, eos_ids
from longread.graphs import GraphSteps, StepKey
from longread.rope import Rope, default_rope_mode

log = logging.getLogger(__name__)

# Model families whose attention we have tested with the pos-shift cache (tiny random configs in tests/).
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma")

Logits = Literal["last", "all"]


@dataclass(eq=False)
class Stream:
    """One stream in a ``BatchEngine``: its current row (the engine may move it), policy and last logits."""

    row: int
    policy: CachePolicy
    last_logits: torch.Tensor | None = None  # (V,) float32, after the last token fed


@dataclass
class Snapshot:
    """A copy of one stream's state; restorable any number of times, and serializable (``to_bytes``)."""

    cache: dict[str, Any]
    policy: CachePolicy
    last_logits: torch.Tensor | None

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        state = {
            "cache": {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in self.cache.items()},
            # on the host, like the cache: bytes written on a GPU load anywhere (Cascading's scores)
            "policy": {
                k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in self.policy.state_dict().items()
            },
            "policy_name": self.policy.name,
            "policy_params": self.policy.params(),
            "last_logits": None if self.last_logits is None else self.last_logits.cpu(),
        }
        torch.save(state, buf)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, prototype: CachePolicy) -> Snapshot:
        """Load bytes written by ``to_bytes``; ``prototype`` is the engine's bound policy (same settings)."""
        state = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
        if state["policy_name"] != prototype.name or state["policy_params"] != prototype.params():
            raise ValueError(
                f"snapshot of {state['policy_name']}{state['policy_params']} cannot be restored into an "
                f"engine running {prototype.describe()}; resume with the same policy settings."
            )
        policy = copy.deepcopy(prototype)
        policy.load_state_dict(state["policy"])
        return cls(state["cache"], policy, state["last_logits"])


@dataclass
class _Block:
    """The rows of one forward, in row order: ``streams[j]`` (the caller's ``order[j]``-th) sits in row
    ``row0 + j`` with ``lengths[j]`` cached tokens and feeds ``batch[j, :sizes[j]]``."""

    row0: int
    order: list[int]
    streams: list[Stream]
    sizes: list[int]
    lengths: list[int]
    width: int
    batch: torch.Tensor  # (n, width) token ids on the host, zero-padded


class EngineStats:
    """Work done by an engine: tokens fed and device time in the model, in compaction and in score work."""

    def __init__(self) -> None:
        self.tokens = 0
        self.forwards = 0
        self.forward = Timer()
        self.compact = Timer()
        self.scores = Timer()

    @property
    def forward_seconds(self) -> float:
        return self.forward.seconds

    @property
    def compact_seconds(self) -> float:
        return self.compact.seconds

    @property
    def seconds(self) -> float:
        return self.forward_seconds + self.compact_seconds

    @property
    def extra(self) -> dict[str, float]:
        return {"score_seconds": self.scores.seconds}

    @property
    def tokens_per_s(self) -> float:
        seconds = self.seconds
        return self.tokens / seconds if seconds > 0 else 0.0


def model_geometry(model: nn.Module) -> tuple[int, int, int, int]:
    """(layers, KV heads, query heads, head dim) of a causal LM's text model."""
    config = model.config.get_text_config()  # type: ignore[union-attr,operator]
    layers = int(config.num_hidden_layers)
    q_heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or q_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // q_heads)
    return layers, kv_heads, q_heads, head_dim


class BatchEngine:
    """Runs ``model`` over up to ``rows`` streams at once under copies of ``policy`` (see the module doc)."""

    def __init__(
        self,
        model: nn.Module,
        policy: CachePolicy,
        *,
        rows: int = 1,
        stride: int = 512,
        rope_mode: RopeMode | None = None,
        tokenizer: Any = None,
        cuda_graphs: bool = False,
        decode_compaction: Literal["chunk", "token"] = "chunk",
    ) -> None:
        if stride < 1:
            raise ValueError(f"stride={stride} must be >= 1 (1 = token-by-token).")
        config = model.config.get_text_config()  # type: ignore[union-attr,operator]
        model_type = getattr(config, "model_type", "?")
        if model_type not in SUPPORTED_MODEL_TYPES:
            log.warning(
                "model type %r is not in the tested set %s; results may be wrong if its attention differs "
                "from the Llama family's.",
                model_type,
                SUPPORTED_MODEL_TYPES,
            )
        self.model = model
        self.tokenizer = tokenizer
        self.prototype = policy
        self.stride = stride
        self.num_layers, self.num_kv_heads, _, head_dim = model_geometry(model)
        self.vocab_size = int(config.vocab_size)
        policy.bind(self.num_layers, self.num_kv_heads)
        self.rope = Rope.from_model(model)
        param = next(model.parameters())
        self.device = param.device
        self.dtype = param.dtype
        # None: the faithful implementation for the cache's dtype (longread.rope.default_rope_mode).
        self.rope_mode: RopeMode = rope_mode or default_rope_mode(self.dtype)
        self.kv = BatchCache(
            self.num_layers,
            self.rope,
            rows=rows,
            heads=self.num_kv_heads,
            head_dim=head_dim,
            capacity=None if policy.budget is None else policy.budget + stride,
            rope_mode=self.rope_mode,
            dtype=self.dtype,
            device=self.device,
        )
        self.attention = use_engine_attention(model, policy.needs_scores)
        self.flash = is_flash(model)
        self.owner: list[Stream | None] = [None] * rows
        self.stats = EngineStats()
        if decode_compaction not in ("chunk", "token"):
            raise ValueError(f"decode_compaction={decode_compaction!r}: use 'chunk' or 'token'.")
        #: when generation compacts: once per `stride` tokens ("chunk") or after every token ("token")
        self.decode_compaction = decode_compaction
        #: replay steady-state steps (full chunks; one-token steps with "token" compaction) from captured
        #: CUDA graphs: bounded policies, SDPA or eager attention (``longread.graphs``)
        self.cuda_graphs = cuda_graphs
        self.graphs = GraphSteps()

    # ----------------------------------------------------------------- streams
    @property
    def defers_answers(self) -> bool:
        """Whether prompts and generated tokens wait in the spare slots (``decode_compaction="chunk"``)
        instead of being compacted after every forward."""
        return self.decode_compaction == "chunk"

    @property
    def rows(self) -> int:
        return self.kv.rows

    @property
    def free_rows(self) -> int:
        return sum(1 for s in self.owner if s is None)

    def _take_row(self) -> int:
        for row, owner in enumerate(self.owner):
            if owner is None:
                return row
        raise RuntimeError(f"all {self.rows} rows of the engine are in use; close a stream first")

    def open(self, policy: CachePolicy | None = None) -> Stream:
        """A new, empty stream in a free row (its policy: ``policy``, else a fresh copy of the engine's)."""
        row = self._take_row()
        if policy is None:
            policy = copy.deepcopy(self.prototype)
        policy.reset()
        stream = Stream(row, policy)
        self.owner[row] = stream
        self.kv.reset_row(row)
        return stream

    def close(self, stream: Stream) -> None:
        if self.owner[stream.row] is not stream:
            raise ValueError("this stream is not open in this engine")
        self.kv.reset_row(stream.row)
        self.owner[stream.row] = None

    def reset(self, stream: Stream) -> None:
        """Start ``stream`` over: empty cache row, fresh policy state."""
        self.kv.reset_row(stream.row)
        stream.policy.reset()
        stream.last_logits = None

    @torch.inference_mode()
    def fork(self, stream: Stream) -> Stream:
        """A new stream in a free row with a copy of ``stream``'s whole state."""
        row = self._take_row()
        child = Stream(row, copy.deepcopy(stream.policy), stream.last_logits)
        self.owner[row] = child
        self.kv.copy_row(stream.row, row)
        return child

    @torch.inference_mode()
    def snapshot(self, stream: Stream) -> Snapshot:
        return Snapshot(self.kv.save_row(stream.row), copy.deepcopy(stream.policy), stream.last_logits)

    @torch.inference_mode()
    def restore(self, stream: Stream, snap: Snapshot) -> None:
        """Continue ``stream`` from ``snap`` (which stays untouched and can be restored again)."""
        self.kv.load_row(stream.row, snap.cache)
        stream.policy = copy.deepcopy(snap.policy)
        stream.last_logits = None if snap.last_logits is None else snap.last_logits.to(self.device)

    @torch.inference_mode()
    def _swap(self, i: int, j: int) -> None:
        self.kv.swap_rows(i, j)
        self.owner[i], self.owner[j] = self.owner[j], self.owner[i]
        for row in (i, j):
            owner = self.owner[row]
            if owner is not None:
                owner.row = row

    def _arrange(self, streams: Sequence[Stream]) -> int:
        """Move ``streams`` into a contiguous block of rows with the fewest swaps; returns its first row."""
        n = len(streams)
        members = {s.row for s in streams}
        start = max(range(self.rows - n + 1), key=lambda a: (sum(r in members for r in range(a, a + n)), -a))
        block = range(start, start + n)
        outside = [s for s in streams if s.row not in block]
        spots = [r for r in block if r not in members]
        for stream, spot in zip(outside, spots):
            self._swap(stream.row, spot)
        return start

    # ----------------------------------------------------------------- one forward
    def _mask(
        self, lengths: list[int], sizes: list[int], width: int
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """(n, 1, S, K): query q of row b sees keys <= length[b] + min(q, size[b] - 1) -- and, in a layer
        with a sliding window W, only the last W of those (transformers uses a given 4D mask as is, so the
        window is applied here as it is on the uniform path). Boolean for SDPA; additive float for eager,
        which adds the mask to the scores. Models that mix full and sliding layers (``layer_types``) get
        one mask per kind of layer."""
        keys = max(lengths) + width
        q = torch.arange(width)[None, :]  # (1, S)
        last = torch.tensor(lengths)[:, None] + torch.minimum(q, torch.tensor(sizes)[:, None] - 1)  # (n, S)
        k = torch.arange(keys)[None, None, :]  # (1, 1, K)
        full = k <= last[:, :, None]  # (n, S, K)
        model: Any = self.model
        config = model.config.get_text_config()
        window = getattr(config, "sliding_window", None)
        kinds = set(getattr(config, "layer_types", None) or ())
        sliding = None
        if window is not None and (not kinds or "sliding_attention" in kinds):
            sliding = full & (k > last[:, :, None] - int(window))

        def prepared(visible: torch.Tensor) -> torch.Tensor:
            visible = visible[:, None]
            if self.attention == "eager":
                dtype: torch.dtype = model.dtype
                visible = torch.zeros(visible.shape, dtype=dtype).masked_fill_(
                    ~visible, torch.finfo(dtype).min
                )
            return to_device(visible, self.device)

        if sliding is None:
            return prepared(full)
        if not kinds:  # every layer slides (Mistral)
            return prepared(sliding)
        masks = {"full_attention": full, "sliding_attention": sliding}
        return {kind: prepared(masks[kind]) for kind in kinds if kind in masks}

    @torch.inference_mode()
    def forward(
        self,
        streams: Sequence[Stream],
        chunks: Sequence[torch.Tensor | Sequence[int]],
        logits: Logits = "last",
        defer: bool | Sequence[bool] = False,
    ) -> list[torch.Tensor]:
        """Feed ``chunks[i]`` (1..stride token ids) to ``streams[i]`` in one model forward, then compact.

        Returns per stream its logits: the last position's ``(V,)`` (``"last"``) or every position's
        ``(size, V)`` (``"all"``), in the model's dtype. ``stream.last_logits`` is updated either way.
        ``defer`` (one flag for all streams, or one per stream): leave the chunk waiting in the cache; a
        row is compacted once it has no room for the next chunk, and before any forward that does not
        defer it (generation uses this for prompts and generated tokens: see ``decode``).
        """
        ids_list, deferred = self._check_chunks(streams, chunks, defer)
        width = max(ids.numel() for ids in ids_list)
        self._make_room(streams, deferred, width)
        block = self._block(streams, ids_list, width)
        out_logits, sums, picks = self._run_block(block, logits)
        self.stats.tokens += sum(block.sizes)
        self.stats.forwards += 1
        results = self._hand_out(block, out_logits, picks, logits)
        if sums is not None:
            for j, stream in enumerate(block.streams):
                stream.policy.observe(sums[0][:, j, :, : block.lengths[j] + block.sizes[j]], block.sizes[j])
        now = [s for s in block.streams if id(s) not in deferred]
        if now:
            with self.stats.compact.measure(self.device):
                self._compact(now)
        return results

    def _check_chunks(
        self,
        streams: Sequence[Stream],
        chunks: Sequence[torch.Tensor | Sequence[int]],
        defer: bool | Sequence[bool],
    ) -> tuple[list[torch.Tensor], set[int]]:
        """``forward``'s arguments checked: the chunks as flat id tensors, and the ids of the streams whose
        chunk waits in the cache (``defer``)."""
        if len({id(s) for s in streams}) != len(streams) or len(streams) != len(chunks) or not streams:
            raise ValueError("forward takes distinct streams, one chunk each")
        defers = [defer] * len(streams) if isinstance(defer, bool) else [bool(d) for d in defer]
        if len(defers) != len(streams):
            raise ValueError(f"defer has {len(defers)} flags for {len(streams)} streams; give one each")
        deferred = {id(s) for s, d in zip(streams, defers) if d}
        ids_list = [torch.as_tensor(c, dtype=torch.long).flatten() for c in chunks]
        for ids in ids_list:
            if not 1 <= ids.numel() <= self.stride:
                raise ValueError(f"a chunk holds 1..{self.stride} token ids, got {ids.numel()}")
        return ids_list, deferred

    def _make_room(self, streams: Sequence[Stream], deferred: set[int], width: int) -> None:
        """Before the forward, compact the rows holding deferred tokens beyond the budget: every such row,
        unless its chunk waits too and still fits (each row is written padded to the widest chunk)."""
        budget = self.prototype.budget
        if budget is None:
            return
        full = [
            s
            for s in streams
            if self.kv.length(s.row) > budget
            and (id(s) not in deferred or self.kv.length(s.row) + width > self.kv.capacity)
        ]
        if full:
            with self.stats.compact.measure(self.device):
                self._compact(full)

    def _block(self, streams: Sequence[Stream], ids_list: list[torch.Tensor], width: int) -> _Block:
        """Move ``streams`` into a contiguous block of rows and lay their chunks out in row order."""
        row0 = self._arrange(streams)
        order = sorted(range(len(streams)), key=lambda i: streams[i].row)
        ordered = [streams[i] for i in order]
        sizes = [ids_list[i].numel() for i in order]
        lengths = [self.kv.length(s.row) for s in ordered]
        batch = torch.zeros(len(order), width, dtype=torch.long)
        for j, i in enumerate(order):
            batch[j, : sizes[j]] = ids_list[i]
        return _Block(row0, order, ordered, sizes, lengths, width, batch)

    def _run_block(
        self, block: _Block, logits: Logits
    ) -> tuple[torch.Tensor, list[torch.Tensor] | None, list[int]]:
        """One model forward over ``block`` (replayed from a captured CUDA graph where it can be). Returns
        the logits it kept ``(n, len(picks), V)``, a score policy's column sums, and the chunk position of
        each kept logit (``picks``). A failed forward leaves the rows as they were."""
        lengths, sizes, width = block.lengths, block.sizes, block.width
        position_ids = to_device(torch.tensor(lengths)[:, None] + torch.arange(width), self.device)
        uniform = len(set(lengths)) == 1 and all(s == width for s in sizes)
        mask = None if uniform or self.flash else self._mask(lengths, sizes, width)
        sink, sums = self._score_sink(block.streams, sizes, width)
        ctx = ForwardContext(lengths, sizes, width, self.device, scores=sink)
        ctx.device_layout()  # per-row lengths and sizes on the device once, for every layer
        keep, picks = self._logits_to_keep(sizes, width, logits)
        self.kv.begin(block.row0, sizes, width)
        try:
            with self.stats.forward.measure(self.device), forward_context(ctx):
                key = self._step_key(block.row0, len(sizes), uniform, width, lengths[0], keep)
                replayed = None
                if key is not None:
                    replayed = self._run_step(key, block.batch, position_ids, ctx, sink, sums)
                if replayed is not None:
                    out_logits, sums = replayed
                else:
                    out_logits = self.model(
                        input_ids=to_device(block.batch, self.device),
                        position_ids=position_ids,
                        attention_mask=mask,
                        cache=self.kv,
                        use_cache=True,
                        logits_to_keep=keep,
                    ).logits
        except BaseException:
            self.kv.end(commit=False)  # the rows keep what they held before this chunk
            raise
        self.kv.end()
        return out_logits, sums, picks

    def _logits_to_keep(
        self, sizes: list[int], width: int, logits: Logits
    ) -> tuple[int | torch.Tensor, list[int]]:
        """The model's ``logits_to_keep`` (0: every position; 1: the last; else the positions, on the device)
        and the chunk positions whose logits it returns: all of them for ``"all"``, else each row's last."""
        if logits == "all":
            return 0, list(range(width))
        last = sorted({s - 1 for s in sizes})
        if len(last) == 1 and last[0] == width - 1:
            return 1, [width - 1]
        return to_device(torch.tensor(last), self.device), last

    def _hand_out(
        self, block: _Block, out_logits: torch.Tensor, picks: list[int], logits: Logits
    ) -> list[torch.Tensor]:
        """Each stream's logits in the caller's order; sets every stream's ``last_logits``."""
        results: list[torch.Tensor] = [torch.empty(0)] * len(block.streams)
        for j, stream in enumerate(block.streams):
            row_logits = out_logits[j]
            last_logits = row_logits[picks.index(block.sizes[j] - 1)]
            # a copy: a view would keep the whole forward's logits alive (in snapshots and their bytes)
            stream.last_logits = last_logits.to(torch.float32, copy=True)
            results[block.order[j]] = row_logits[: block.sizes[j]] if logits == "all" else last_logits
        return results

    # ----------------------------------------------------------------- captured steps (CUDA graphs)
    def _step_key(
        self, row0: int, n: int, uniform: bool, width: int, length: int, keep: Any
    ) -> StepKey | None:
        """The step's key when it can replay from a captured graph (``longread.graphs``), else None: rows
        that all hold the same number of tokens and feed the same number (a full chunk in steady state, or
        one token with per-token compaction) under a bounded policy, with ``cuda_graphs`` on."""
        if not (
            self.cuda_graphs
            and uniform
            and length > 0
            and isinstance(keep, int)
            and self.graphs.backend.supports(self.device)
            and self.prototype.bounded  # buffers never reallocated: the graph's addresses stay valid
            and not self.flash  # the flash wrappers' kernel loading is not capture-safe
            # with deferred compaction a decode step's length changes at every token
            and (width > 1 or self.decode_compaction == "token")
        ):
            return None
        return StepKey(row0, n, length, width, keep)

    def _run_step(
        self,
        key: StepKey,
        batch: torch.Tensor,
        position_ids: torch.Tensor,
        ctx: ForwardContext,
        sink: ScoreSink | None,
        sums: list[torch.Tensor] | None,
    ) -> tuple[torch.Tensor, list[torch.Tensor] | None] | None:
        """Replay (or capture, on the key's second sighting) the step; None: run it eagerly."""
        weights = None if sink is None else sink.weights
        step = self.graphs.get(key)
        if step is None:
            if not self.graphs.ready(key):
                return None
            ids = torch.zeros(key.rows, key.width, dtype=torch.long, device=self.device)

            def run() -> torch.Tensor:
                return self.model(
                    input_ids=ids,
                    position_ids=position_ids,
                    cache=self.kv,
                    use_cache=True,
                    logits_to_keep=key.keep,
                ).logits

            try:
                # held: what the kernels read besides the cache (not ctx itself: its score hook refers to
                # this engine, and a cycle would keep a dropped engine's cache alive until a GC pass)
                held = (position_ids, *ctx.device_layout())
                step = self.graphs.capture(
                    key, run, self.device, ids=ids, weights=weights, sums=sums, held=held
                )
            except Exception as exc:  # an optimization, not a requirement: keep serving, eagerly
                log.warning(
                    "CUDA graph capture of %s failed (%r); this engine runs every step eagerly from now on",
                    key,
                    exc,
                )
                self.cuda_graphs = False
                self.graphs.clear()
                return None
        self.graphs.replay(step, batch, weights)
        # The graph's outputs are overwritten by its next replay: hand out copies.
        return step.logits.clone(), step.sums

    def _score_sink(
        self, streams: Sequence[Stream], sizes: list[int], width: int
    ) -> tuple[ScoreSink | None, list[torch.Tensor] | None]:
        """For score policies: per-row query weights and a buffer the attention fills, (L, n, H_q, K)."""
        if not self.prototype.needs_scores:
            return None, None
        weights = torch.zeros(len(streams), width, device=self.device)
        for j, (stream, size) in enumerate(zip(streams, sizes)):
            row = stream.policy.query_weights(size, self.device)
            weights[j, :size] = 1.0 if row is None else row
        holder: list[torch.Tensor] = []

        def on_layer(layer: int, sums: torch.Tensor) -> None:
            if not holder:
                holder.append(sums.new_zeros(self.num_layers, *sums.shape))
            holder[0][layer, :, :, : sums.shape[-1]] = sums

        return ScoreSink(on_layer, weights, timer=self.stats.scores), holder

    def _compact(self, streams: Sequence[Stream]) -> None:
        rows: list[int] = []
        picks: list[torch.Tensor] = []
        kept: list[int] = []
        for stream in streams:
            n = self.kv.length(stream.row)
            if n == 0:
                continue
            idx = stream.policy.select(n, self.kv.positions(stream.row))
            if idx is None:
                continue
            budget = stream.policy.budget
            if budget is not None and idx.shape[-1] > budget:
                raise AssertionError(f"{stream.policy}: kept {idx.shape[-1]} tokens, over its budget")
            rows.append(stream.row)
            picks.append(idx)
            kept.append(idx.shape[-1])
        if not rows:
            return
        # Stack the rows' indices in their smallest common shape -- (T,) shared by layers and heads, (L, T)
        # per layer, or (L, H, T) -- and expand to (L, n, H, T) only as a view on the device: a shared index
        # materialized for every layer and head would be L*H times the bytes (134 MB a step for 32 rows of
        # an 8B model), built on the host and copied over at every generated token.
        ndim = max(p.ndim for p in picks)
        layers, heads = self.num_layers, self.num_kv_heads
        full = {1: (-1,), 2: (layers, -1), 3: (layers, heads, -1)}[ndim]
        width = max(kept)
        device = picks[0].device if all(p.device == picks[0].device for p in picks) else self.device
        padded = []
        for p in picks:
            p = p.to(device)
            p = p.expand(*full) if p.ndim == 1 else (p[:, None, :].expand(*full) if p.ndim < ndim else p)
            if p.shape[-1] < width:  # pad past the kept count (ignored) so the rows stack
                p = torch.cat([p, p[..., -1:].expand(*p.shape[:-1], width - p.shape[-1])], dim=-1)
            padded.append(p)
        stacked = to_device(
            torch.stack(padded, dim=0 if ndim == 1 else 1), self.device
        )  # (n, T) | (L, n, ..)
        if ndim == 1:
            index = stacked[None, :, None, :].expand(layers, -1, heads, -1)
        elif ndim == 2:
            index = stacked[:, :, None, :].expand(-1, -1, heads, -1)
        else:
            index = stacked
        self.kv.compact(rows, index, kept)  # index (L, n, H, T)

    # ----------------------------------------------------------------- generation
    @torch.inference_mode()
    def decode(self, streams: Sequence[Stream], decoders: Sequence[Decoder], feed_last: bool = False) -> None:
        """One generation step for each stream: choose a token from its last logits (its decoder's rules),
        record it, and feed it unless the stream is done (``feed_last``: also feed the final token, so
        the stream continues after everything generated).

        ``decode_compaction="chunk"`` (default): generated tokens wait in the cache's ``stride`` spare slots
        and are compacted together once those are used up -- exactly as if they had been fed as one
        chunk, so every token sees at least ``budget`` tokens and the cache never holds more than
        ``budget + stride``, while compaction (a pass over the whole cache) runs once per ``stride``
        tokens instead of once per token. ``"token"`` compacts after every token (static shapes: the
        mode CUDA graphs can replay)."""
        logits = torch.stack([s.last_logits for s in streams if s.last_logits is not None])
        if logits.shape[0] != len(streams):
            raise ValueError("nothing to continue from: stream some text or pass a prompt first")
        Decoder.process(logits, decoders)
        tokens = Decoder.choose(logits, decoders)
        feed: list[Stream] = []
        chunks: list[list[int]] = []
        for stream, decoder, token in zip(streams, decoders, tokens):
            done = decoder.push(token)
            if (not done or feed_last) and decoder.reason != "eos":
                feed.append(stream)
                chunks.append([token])
        if feed:
            self.forward(feed, chunks, defer=self.defers_answers)

    @torch.inference_mode()  # select writes into the policy's score buffers, made in inference mode
    def flush(self, stream: Stream) -> None:
        """Compact tokens that generation left waiting, so the stream holds at most ``budget`` again."""
        budget = self.prototype.budget
        if budget is not None and self.kv.length(stream.row) > budget:
            with self.stats.compact.measure(self.device):
                self._compact([stream])

    def decoder(self, settings: GenerationSettings) -> Decoder:
        return Decoder(settings, self.tokenizer, eos_ids(self.model, self.tokenizer))

    def encode(self, text: str) -> list[int]:
        if self.tokenizer is None:
            raise ValueError("this engine has no tokenizer; pass tokenizer= to the engine")
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])


class RowView:
    """One stream's view of the cache, for statistics and tests: ``(L, H, T)`` positions, lengths, bytes."""

    def __init__(self, engine: BatchEngine, stream: Stream) -> None:
        self.engine, self.stream = engine, stream
        self.peak_length = 0

    @property
    def length(self) -> int:
        return self.engine.kv.length(self.stream.row)

    @property
    def seen(self) -> int:
        return self.engine.kv.seen(self.stream.row)

    @property
    def layers(self) -> list[BatchLayer]:
        return self.engine.kv.slots

    @property
    def rope_mode(self) -> RopeMode:
        return self.engine.kv.rope_mode

    def positions(self) -> torch.Tensor:
        """Original stream positions of the cached tokens, ``(L, H, length)``."""
        return self.engine.kv.positions(self.stream.row)

    def nbytes(self) -> int:
        """Bytes of key/value buffers held for this stream (its row's share, allocated, not just used)."""
        return self.engine.kv.nbytes() // self.engine.kv.rows

    def layer_stats(self, sink: int = 0) -> list[dict[str, int]]:
        """Per layer: tokens kept and the oldest non-sink stream position kept."""
        out = []
        pos = self.positions()
        for i in range(pos.shape[0]):
            rest = pos[i][pos[i] >= sink]
            out.append(
                {"layer": i, "kept": pos.shape[-1], "oldest_pos": int(rest.min()) if rest.numel() else -1}
            )
        return out


class StreamingEngine(BatchEngine):
    """Runs ``model`` over one token stream under ``policy`` (the object itself holds the stream's state)."""

    def __init__(
        self,
        model: nn.Module,
        policy: CachePolicy,
        *,
        stride: int = 512,
        rope_mode: RopeMode | None = None,
        tokenizer: Any = None,
    ) -> None:
        super().__init__(model, policy, rows=1, stride=stride, rope_mode=rope_mode, tokenizer=tokenizer)
        self.stream = self.open(policy)
        self.cache = RowView(self, self.stream)

    # ----------------------------------------------------------------- state
    @property
    def policy(self) -> CachePolicy:
        return self.stream.policy

    @property
    def last_logits(self) -> torch.Tensor | None:
        return self.stream.last_logits

    @property
    def tokens_seen(self) -> int:
        return self.kv.seen(self.stream.row)

    def reset(self, stream: Stream | None = None) -> None:
        """Start a new stream: empty cache, fresh policy state."""
        super().reset(stream or self.stream)
        self.stats = EngineStats()
        self.cache.peak_length = 0

    def snapshot(self, stream: Stream | None = None) -> Snapshot:
        return super().snapshot(stream or self.stream)

    def restore(self, stream_or_snap: Stream | Snapshot, snap: Snapshot | None = None) -> None:
        if isinstance(stream_or_snap, Snapshot):
            super().restore(self.stream, stream_or_snap)
        else:
            assert snap is not None
            super().restore(stream_or_snap, snap)

    # ----------------------------------------------------------------- core
    @torch.inference_mode()
    def forward_chunk(
        self, ids: torch.Tensor, logits: bool = True, defer: bool = False
    ) -> torch.Tensor | None:
        """Run one chunk ``ids`` (S,) with S <= stride, then compact (``defer``: once the spare slots are
        used up, see ``forward``). Returns logits (S, V) if asked."""
        if ids.ndim != 1 or not 1 <= ids.numel() <= self.stride:
            raise ValueError(
                f"forward_chunk takes 1..{self.stride} token ids as a 1-D tensor, got {ids.shape}"
            )
        self.cache.peak_length = max(self.cache.peak_length, self.cache.length + ids.numel())
        out = self.forward([self.stream], [ids], logits="all" if logits else "last", defer=defer)[0]
        return out if logits else None

    def chunks(self, ids: torch.Tensor | Sequence[int]) -> Iterator[torch.Tensor]:
        ids = torch.as_tensor(ids, dtype=torch.long).flatten()
        for start in range(0, ids.numel(), self.stride):
            yield ids[start : start + self.stride]

    def feed(self, ids: torch.Tensor | Sequence[int], defer: bool = False) -> None:
        """Stream ``ids`` through the model (no logits kept beyond the last position)."""
        for chunk in self.chunks(ids):
            self.forward_chunk(chunk, logits=False, defer=defer)

    def feed_text(self, text: str) -> int:
        ids = self.encode(text)
        self.feed(ids)
        return len(ids)

    @torch.inference_mode()
    def nll(self, ids: torch.Tensor, progress: Callable[[int], None] | None = None) -> Iterator[torch.Tensor]:
        """Stream ``ids`` and yield, per chunk, the float32 negative log-likelihood of each next token.

        The first token has no prediction; every later token is predicted from everything before it
        (as compressed by the policy). Across all chunks this yields ``len(ids) - 1`` values.
        """
        ids = torch.as_tensor(ids, dtype=torch.long).flatten()
        total = ids.numel()
        for start in range(0, total, self.stride):
            chunk = ids[start : start + self.stride]
            logits = self.forward_chunk(chunk)
            assert logits is not None
            targets = ids[start + 1 : start + 1 + chunk.numel()].to(logits.device)
            logits = logits[: targets.numel()].float()
            # The last chunk may have nothing left to predict; it still yields (empty) so callers see it end.
            yield torch.nn.functional.cross_entropy(logits, targets, reduction="none").cpu()
            if progress is not None:
                progress(chunk.numel())

    def perplexity(self, ids: torch.Tensor) -> float:
        nll = torch.cat(list(self.nll(ids)))
        return math.exp(nll.mean().item())

    @torch.inference_mode()
    def generate(
        self,
        prompt: str | Sequence[int] | None = None,
        *,
        settings: GenerationSettings | None = None,
        **overrides: Any,
    ) -> GenerationResult:
        """Feed ``prompt`` (text or ids) after what was streamed, then generate with continuous compaction.

        ``settings`` (or keyword overrides of its fields, e.g. ``max_new_tokens=64``) say how; see
        ``longread.generation``. Generation stops at an EOS token, at the first stop string (cut from the
        text), or after ``max_new_tokens`` (optionally finishing the sentence). The stream continues after
        every generated token. The prompt waits in the cache's spare slots like the generated tokens
        (``decode``), so a question evicts nothing of what was streamed while it and the answer fit in
        ``stride`` tokens.
        """
        settings = settings or GenerationSettings()
        if overrides:
            settings = settings.with_(**overrides)
        t0 = time.perf_counter()
        if prompt is not None:
            ids = self.encode(prompt) if isinstance(prompt, str) else list(prompt)
            self.feed(ids, defer=self.defers_answers)
        if self.last_logits is None:
            raise ValueError("nothing to continue from: stream some text or pass a prompt first")
        decoder = self.decoder(settings)
        while not decoder.done:
            self.decode([self.stream], [decoder], feed_last=True)
        self.flush(self.stream)
        return decoder.result(time.perf_counter() - t0)


__all__ = [
    "BatchEngine",
    "EngineStats",
    "GenerationResult",
    "GenerationSettings",
    "Snapshot",
    "Stream",
    "StreamingEngine",
    "model_geometry",
]
