"""Counters of the decode engine that a benchmark reads (``LLM.stats``; no timings, SPEC 5)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass
class EngineStats:
    """Counters a benchmark reads from ``LLM.stats`` (no timings).

    Attributes:
        steps: engine steps run.
        block_calls: shared-block calls (``run_block`` on one batch).
        block_items: (token, recursion) pairs the shared block computed (real tokens only).
        block_padding: padded positions in prefill block calls (right-padded rows of different lengths).
        max_decode_block_items: most decode items in one block call (<= B).
        max_prefill_block_tokens: most real prefill tokens in one block call.
        skipped_recursions: (token, recursion) pairs not computed because the token had exited.
        prefill_tokens, decode_tokens: tokens that entered the model as prefill / decode.
        generated_tokens: tokens sampled.
        exits_by_depth: tokens by number of recursions they ran (index = recursions), prefill and
            decode tokens together.
        decode_exits_by_depth: the same for decode tokens only (the tokens generation feeds back).
        preemptions: requests whose KV was taken back and recomputed.
        computed_exited: block-call items that were not in flight (bookkeeping check, stays 0).
        max_running: most requests running at once (admitted and not finished).
        kv_bytes_in_use, kv_bytes_peak: KV pages held now / at most (bytes of whole pages, all pools).
        kv_tensor_bytes: K/V tensor bytes allocated (the arena, used or not; at most the budget).
        kv_entries_written: (token, layer) KV entries written (K and V of one token at one layer).
    """

    steps: int = 0
    block_calls: int = 0
    block_items: int = 0
    block_padding: int = 0
    max_decode_block_items: int = 0
    max_prefill_block_tokens: int = 0
    skipped_recursions: int = 0
    prefill_tokens: int = 0
    decode_tokens: int = 0
    generated_tokens: int = 0
    exits_by_depth: list[int] = field(default_factory=list)
    decode_exits_by_depth: list[int] = field(default_factory=list)
    preemptions: int = 0
    computed_exited: int = 0
    max_running: int = 0
    kv_bytes_in_use: int = 0
    kv_bytes_peak: int = 0
    kv_entries_written: int = 0
    kv_tensor_bytes: int = 0

    def copy(self) -> EngineStats:
        """An independent copy (a reader never changes the engine's counters)."""
        return replace(
            self, exits_by_depth=list(self.exits_by_depth), decode_exits_by_depth=list(self.decode_exits_by_depth)
        )

    def average_depth(self, decode_only: bool = False) -> float:
        """Mean recursions per token that left the model (``decode_only``: decode tokens only)."""
        counts = self.decode_exits_by_depth if decode_only else self.exits_by_depth
        n = sum(counts)
        return sum(i * c for i, c in enumerate(counts)) / n if n else 0.0

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["average_depth"] = self.average_depth()
        d["decode_average_depth"] = self.average_depth(decode_only=True)
        return d
