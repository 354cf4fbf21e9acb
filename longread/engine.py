"""The streaming engine: a Hugging Face causal LM over an unbounded token stream at fixed memory.

Contract:

* Tokens are fed in chunks of at most ``stride``. Each chunk attends to the cache plus itself (causally);
  then the policy compacts every layer to at most ``budget`` tokens. So the cache never holds more than
  ``budget + stride`` tokens and memory does not depend on stream length. ``stride=1`` is token-by-token.
* Positions are pos-shift: the chunk's queries start right after the last cached key (see
  ``longread.cache``), so positions never exceed ``budget + stride`` and any stream length works.
* ``generate`` continues from whatever has been streamed, compacting after every generated token.
* ``snapshot``/``restore`` copy the whole state (cache + policy) so several continuations can start from
  one streamed document without contaminating each other.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from cache_policies.base import CachePolicy
from longread.cache import BoundedCache, RopeMode
from longread.generation import Decoder, GenerationResult, GenerationSettings, eos_ids
from longread.rope import Rope, default_rope_mode

log = logging.getLogger(__name__)

# Model families whose attention we have tested with the pos-shift cache (tiny random configs in tests/).
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma")


@dataclass
class Snapshot:
    cache: BoundedCache
    policy: CachePolicy
    last_logits: torch.Tensor | None


@dataclass
class StreamStats:
    tokens: int = 0
    seconds: float = 0.0
    forward_seconds: float = 0.0
    compact_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StreamingEngine:
    """Runs ``model`` over a token stream under ``policy``. One engine = one stream at a time (batch 1)."""

    def __init__(
        self,
        model: nn.Module,
        policy: CachePolicy,
        *,
        stride: int = 512,
        rope_mode: RopeMode | None = None,
        tokenizer: Any = None,
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
        self.policy = policy
        self.stride = stride
        self.num_layers = int(config.num_hidden_layers)
        self.num_kv_heads = int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
        policy.bind(self.num_layers, self.num_kv_heads)
        self.rope = Rope.from_model(model)
        # None: the faithful implementation for the cache's dtype (longread.rope.default_rope_mode).
        self.rope_mode: RopeMode = rope_mode or default_rope_mode(next(model.parameters()).dtype)
        capacity = None if policy.budget is None else policy.budget + stride
        self.cache = BoundedCache(self.num_layers, self.rope, capacity, self.rope_mode)
        self.device = next(model.parameters()).device
        self.last_logits: torch.Tensor | None = None  # (V,) logits after the last token fed
        self.stats = StreamStats()
        # Score-based policies (Cascading) need exact attention probabilities: route attention through
        # longread.attention, whose column sums reach policy.observe while forward_chunk runs the model.
        from contextlib import AbstractContextManager, nullcontext

        from longread.attention import ScoreRecorder, record_scores, use_score_attention

        self._score_context: Callable[[CachePolicy], AbstractContextManager[ScoreRecorder | None]]
        self._score_context = lambda _: nullcontext()
        if policy.needs_scores:
            use_score_attention(model)
            self._score_context = record_scores

    # ----------------------------------------------------------------- state
    def reset(self) -> None:
        """Start a new stream: empty cache, fresh policy state."""
        self.cache.reset()
        self.policy.reset()
        self.last_logits = None
        self.stats = StreamStats()

    def snapshot(self) -> Snapshot:
        return Snapshot(self.cache.clone(), copy.deepcopy(self.policy), self.last_logits)

    def restore(self, snap: Snapshot) -> None:
        """Continue from ``snap``; the snapshot itself stays untouched and can be restored again."""
        self.cache = snap.cache.clone()
        self.policy = copy.deepcopy(snap.policy)
        self.last_logits = snap.last_logits

    @property
    def tokens_seen(self) -> int:
        return self.cache.seen

    # ----------------------------------------------------------------- core
    @torch.inference_mode()
    def forward_chunk(self, ids: torch.Tensor, logits: bool = True) -> torch.Tensor | None:
        """Run one chunk ``ids`` (S,) with S <= stride, then compact. Returns logits (S, V) if asked."""
        if ids.ndim != 1 or not 1 <= ids.numel() <= self.stride:
            raise ValueError(
                f"forward_chunk takes 1..{self.stride} token ids as a 1-D tensor, got {ids.shape}"
            )
        t0 = time.perf_counter()
        n, size = self.cache.length, ids.numel()
        position_ids = torch.arange(n, n + size, device=self.device)[None]
        with self._score_context(self.policy) as recorder:
            out = self.model(
                input_ids=ids.to(self.device)[None],
                position_ids=position_ids,
                cache=self.cache,
                use_cache=True,
                # Only the last row is needed when logits are not asked for: saves the (S, V) projection.
                logits_to_keep=0 if logits else 1,
            )
        if recorder is not None:
            # Score work runs inside the model call: count it apart so cache maintenance is not understated.
            self.stats.extra["score_seconds"] = self.stats.extra.get("score_seconds", 0.0) + recorder.seconds
        all_logits = out.logits[0]
        self.last_logits = all_logits[-1].float()
        _sync(self.device)
        t1 = time.perf_counter()
        self.cache.compact(self.policy)
        _sync(self.device)
        t2 = time.perf_counter()
        self.stats.tokens += size
        self.stats.forward_seconds += t1 - t0
        self.stats.compact_seconds += t2 - t1
        self.stats.seconds += t2 - t0
        return all_logits if logits else None

    def chunks(self, ids: torch.Tensor | Sequence[int]) -> Iterator[torch.Tensor]:
        ids = torch.as_tensor(ids, dtype=torch.long).flatten()
        for start in range(0, ids.numel(), self.stride):
            yield ids[start : start + self.stride]

    def feed(self, ids: torch.Tensor | Sequence[int]) -> None:
        """Stream ``ids`` through the model (no logits kept beyond the last position)."""
        for chunk in self.chunks(ids):
            self.forward_chunk(chunk, logits=False)

    def feed_text(self, text: str) -> int:
        ids = self._encode(text)
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

    # ----------------------------------------------------------------- generation
    def _encode(self, text: str) -> list[int]:
        if self.tokenizer is None:
            raise ValueError("this engine has no tokenizer; pass tokenizer= to StreamingEngine")
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

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
        text), or after ``max_new_tokens`` (optionally finishing the sentence).
        """
        settings = (settings or GenerationSettings()).with_(**overrides) if overrides else settings
        settings = settings or GenerationSettings()
        t0 = time.perf_counter()
        if prompt is not None:
            ids = self._encode(prompt) if isinstance(prompt, str) else list(prompt)
            self.feed(ids)
        if self.last_logits is None:
            raise ValueError("nothing to continue from: stream some text or pass a prompt first")
        decoder = Decoder(settings, self.tokenizer, eos_ids(self.model, self.tokenizer))
        while True:
            logits = self.last_logits[None].clone()  # (1, V)
            Decoder.process(logits, [decoder])
            token = Decoder.choose(logits, [decoder])[0]
            done = decoder.push(token)
            if decoder.reason != "eos":  # the stream continues after every generated token
                self.forward_chunk(torch.tensor([token]), logits=False)
            if done:
                break
        return decoder.result(time.perf_counter() - t0)
