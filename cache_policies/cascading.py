"""Cascading KV cache (Willette et al., ICLR 2025), from ../shared/reference/cascading.md.

Contract: per layer and KV head, keep ``sink`` (NS) sinks plus ``M = budget - sink`` slots split into
``cascades`` (C) sub-caches of ``W = M / C`` (when C does not divide M, the first ``M mod C`` sub-caches get
one slot more); sub-cache 0 holds the newest tokens. A token at stream position ``p`` (0-based) is inserted
after the chunk's attention and score update. Eager fill: while ``p <= M + NS`` every sub-cache is open;
afterwards sub-cache ``i`` is open iff ``(p - NS) mod 2^i == 0``. The carried token (the new one, then
whatever it displaces) meets sub-caches 0..C-1: A open, not full: append, stop; B open, full: replace the
oldest, carry the oldest on (dropped after the last); C closed, empty: append, stop; D closed, not empty:
overwrite the newest if its score is >= the newest's, else drop; stop.

Scores are float32 EMAs per (layer, KV head, slot), ``s <- beta^S s + sum_q (1-beta) beta^(S-1-q) p(q, slot)``
with the query-head probabilities reduced over each GQA group by max (or mean). They arrive through
``observe`` (all layers at once) from the engine, which has ``longread.attention`` compute them exactly.

Why the insertion can be vectorized: which case applies at each (token, sub-cache) depends only on the
position and the sub-cache counts, never on scores (D overwrites or drops, neither changes a count), so the
control flow is the same for every layer and head and the counts are plain ints. Within one sub-cache an
open (or case C) arrival starts a new *entry*; closed arrivals compete for the newest entry, which ends up
holding the highest-scoring candidate (ties to the later, as ``>=`` does). Entries leave FIFO: entry ``j``
is carried on when entry ``j + W`` is created (``W`` that sub-cache's width). So one chunk is, per
sub-cache, a segmented argmax over the arrivals plus slicing -- a fixed number of tensor ops for all layers,
heads and tokens at once.

Cache order is stream order (sinks, oldest sub-cache, ..., sub-cache 0, each oldest to newest), so after
every chunk the cache's slots are ``[sinks | sub C-1 | ... | sub 0]`` with the same counts for every head:
each sub-cache is a contiguous slot range, and ``select`` returns per-(layer, head) slots in that order.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from cache_policies.base import CachePolicy, param


def _slot_per_cascade(policy: Cascading) -> str | None:
    """``cascades``' rule: every sub-cache gets a slot of ``budget - sink``."""
    assert policy.budget is not None
    slots = policy.budget - policy.sink
    if slots < policy.cascades:
        return (
            f"budget - sink = {slots} slots cannot give cascades={policy.cascades} sub-caches a slot "
            f"each; use budget >= {policy.sink + policy.cascades} or fewer cascades."
        )
    return None


class Cascading(CachePolicy):
    name = "cascading"
    needs_scores = True

    #: Sub-caches C, each fed half as often as the one before.
    cascades: int = param(default=4, minimum=1, note="1 = StreamingLLM", rule=_slot_per_cascade)
    #: Score EMA decay per token.
    beta: float = param(
        default=0.9999,
        between=(0, 1),
        note="paper: 0.9999",
        hint="write it with a dot, e.g. beta=0.9999: YAML reads 1e-4 as text",
    )
    #: How a GQA group's query heads' scores reduce to their KV head's.
    reduce: Literal["max", "mean"] = param(default="max", must="'max' (paper) or 'mean'")

    def __post_init__(self) -> None:
        super().__post_init__()
        assert self.budget is not None
        slots = self.budget - self.sink
        # W = M / C slots each; when C does not divide M the newest sub-caches take one slot more, so any
        # budget works (a budget given as a fraction of a document rarely divides) and the span stays
        # about W (2^C - 1).
        self._widths = [
            slots // self.cascades + (level < slots % self.cascades) for level in range(self.cascades)
        ]
        self._weights: dict[tuple[int, torch.device], torch.Tensor] = {}

    def reset(self) -> None:
        super().reset()
        self.seen = 0  # stream tokens inserted so far
        self.length = 0  # slots kept after the last select: sinks + sum(counts)
        self.counts = [0] * self.cascades  # entries per sub-cache, identical for every layer and head
        self.scores = torch.zeros(0)  # (L, H, budget + largest chunk): EMA per cache slot, in slot order
        self.pending = 0  # tokens observed (scored) since the last select, not inserted yet

    # ----------------------------------------------------------------- scores
    def query_weights(self, n_queries: int, device: torch.device) -> torch.Tensor:
        """EMA weight of each of a chunk's queries, ``(1 - beta) beta^(S-1-q)``: (S,) float32."""
        key = (n_queries, device)
        if key not in self._weights:
            exponent = torch.arange(n_queries - 1, -1, -1, dtype=torch.float64)
            self._weights[key] = ((1 - self.beta) * self.beta**exponent).to(device, torch.float32)
        return self._weights[key]

    def observe(self, scores: torch.Tensor, n_new: int) -> None:
        """``scores``: (L, H_q, n) weighted column sums of every layer over the cache plus the ``n_new``
        chunk tokens (``longread.attention`` computes them during the forward).

        Tokens wait, scored like every other slot, until ``select`` inserts them: after each chunk when
        the engine compacts after each forward, after several one-token steps when it defers compaction
        during generation (then they are inserted like one chunk of those tokens)."""
        layers, _, n = scores.shape
        old = n - n_new
        if layers != self.num_layers or old != self.length + self.pending:
            raise RuntimeError(
                f"cascading: scores for {layers} layers over {old} cached tokens, but the policy has "
                f"{self.num_layers} layers and {self.length} kept + {self.pending} waiting; scores and cache "
                "are out of step (was the cache modified outside the engine?)."
            )
        grouped = scores.view(layers, self.num_kv_heads, -1, n).float()  # (L, H, G, n)
        reduced = grouped.amax(2) if self.reduce == "max" else grouped.mean(2)  # (L, H, n)
        if self.scores.shape[-1] < n or self.scores.device != scores.device:
            grown = torch.zeros(self.num_layers, self.num_kv_heads, n, device=scores.device)
            # the kept slots and the tokens still waiting for select (deferred decode steps)
            grown[..., :old] = self.scores[..., :old].to(scores.device)
            self.scores = grown
        ema = self.scores[..., :n]  # (L, H, n)
        ema[..., :old].mul_(self.beta**n_new)
        ema[..., old:] = 0.0  # new tokens start with the attention they got within their chunk
        ema.add_(reduced)
        self.pending += n_new

    # ----------------------------------------------------------------- cascade
    def _is_open(self, steps: torch.Tensor, level: int) -> torch.Tensor:
        assert self.budget is not None
        eager = steps <= self.budget  # p <= M + NS
        return eager | ((steps - self.sink) % (1 << level) == 0)

    def select(self, n: int, positions: torch.Tensor) -> torch.Tensor | None:
        n_new = n - self.length
        if n_new == 0:
            return None
        if n_new != self.pending:
            raise RuntimeError(
                f"cascading: no attention scores reached the policy for {n_new - self.pending} of the "
                f"{n_new} new tokens; run it through longread.engine, which routes them from the attention "
                "(longread.attention)."
            )
        self.pending = 0
        device = self.scores.device
        layers, heads = self.num_layers, self.num_kv_heads
        new_sinks = min(max(self.sink - self.seen, 0), n_new)
        sinks = min(self.seen + new_sinks, self.sink)
        scores = self.scores[..., :n].reshape(layers * heads, n)  # (LH, n)
        # Arrivals to sub-cache 0: the chunk's non-sink tokens, at the cache slots right after the kept
        # ones (LH, K), and their stream positions (K,).
        arrivals = torch.arange(self.length + new_sinks, n, device=device).expand(layers * heads, -1)
        # Stream positions stay on the CPU: the cascade's control flow depends on them alone, so deciding it
        # there never waits for the device.
        steps = torch.arange(self.seen + new_sinks, self.seen + n_new)
        kept: list[torch.Tensor] = []
        # Each sub-cache's existing entries are a slot range that ends where the newer sub-cache's begins.
        offset = self.length
        for level in range(self.cascades):
            offset -= self.counts[level]
            existing = torch.arange(offset, offset + self.counts[level], device=device)
            entries, arrivals, steps = self._insert(level, scores, existing, arrivals, steps)
            kept.append(entries)
        sink_slots = torch.arange(sinks, device=device).expand(layers * heads, -1)
        idx = torch.cat([sink_slots, *reversed(kept)], dim=1)  # (LH, T) in cache (= stream) order
        self.seen += n_new
        total = idx.shape[1]
        self.length = total
        if total == n:  # nothing dropped, and the order never changes: keep the cache as it is
            return None
        self.compactions += 1
        self.scores[..., :total] = scores.gather(1, idx).view(layers, heads, total)
        return idx.view(layers, heads, total)

    def _insert(
        self,
        level: int,
        scores: torch.Tensor,
        existing: torch.Tensor,
        arrivals: torch.Tensor,
        steps: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Feed ``arrivals`` (LH, K) slots, at stream ``steps`` (K,), to sub-cache ``level``.

        Returns the sub-cache's entries (LH, count) oldest first, and the entries carried on to the next
        sub-cache with the steps at which they leave.
        """
        m, rows = existing.numel(), arrivals.shape[0]
        entries = existing.expand(rows, -1)  # (LH, m)
        if steps.numel() == 0:
            return entries, arrivals, steps
        starts = self._is_open(steps, level)  # (K,) cases A/B start an entry
        if m == 0:
            starts[0] = True  # case C: a closed, empty sub-cache takes the token anyway
        if bool(starts.all()):
            entries = torch.cat([entries, arrivals], dim=1)
        else:
            # Segmented argmax: entry e is won by its highest-scoring candidate, the latest on ties.
            entry_of = torch.cat([torch.arange(m), m - 1 + starts.cumsum(0)])  # (m+K,)
            count = m + int(starts.sum())
            cand = torch.cat([entries, arrivals], dim=1)  # (LH, m+K)
            cand_score = scores.gather(1, cand)
            # entry_of comes from the schedule, decided on the host. No host wait for the copy: from pinned
            # memory it is queued like a kernel, whereas from pageable memory (even non_blocking) CUDA may
            # synchronize with the stream to stage it. On the CPU this is no copy at all.
            if cand.is_cuda:
                entry_of = entry_of.pin_memory()
            groups = entry_of.to(cand.device, non_blocking=cand.is_cuda).expand(rows, -1)
            best = cand_score.new_full((rows, count), float("-inf"))
            best = best.scatter_reduce(1, groups, cand_score, "amax")
            order = torch.arange(cand.shape[1], device=cand.device).expand(rows, -1)
            order = order.masked_fill(cand_score < best.gather(1, groups), -1)
            winner = torch.full_like(best, -1, dtype=torch.long).scatter_reduce(1, groups, order, "amax")
            entries = cand.gather(1, winner)
        width, total = self._widths[level], entries.shape[1]
        evicted = max(0, total - width)
        self.counts[level] = total - evicted
        # Entry j leaves when entry j + W is created, i.e. at the step of the (j + W - m)-th new entry.
        start_steps = steps[starts]
        leave = start_steps[width - m : width - m + evicted]
        return entries[:, evicted:], entries[:, :evicted], leave

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # Snapshots written before sub-caches could differ in width carry ``window``, now derived (_widths).
        super().load_state_dict({k: v for k, v in state.items() if k != "window"})

    def stats(self) -> dict[str, Any]:
        return {"compactions": self.compactions, "seen": self.seen, "counts": list(self.counts)}
