"""The model runner: a :class:`SchedulerDecision` -> tensors -> the model's public stages (SPEC 5).

The model is a :class:`~depthmux.recursion.RecursiveForCausalLM` (transformers LLaMA models are
converted losslessly with ``sharing="none"``). Stages called: ``embed``, ``prefix``, ``route``
(``routing="causal"``: expert-choice continues iff sigmoid(logit) > 0.5, SPEC 4), ``recursion`` /
``run_block`` + ``update`` on chosen rows, ``suffix`` and ``logits``. Every stage call gets a
:class:`~depthmux.recursion.TokenContext` built here (positions = slots = token positions, one
document per row) whose ``cache`` is a :class:`~depthmux.engine.kv_manager.PagedCache` bound to
the rows' streams.

* Prefill chunks [P, M] (right-padded; chunks grouped by length so that padding stays under
  :data:`MAX_PREFILL_PADDING`, :func:`prefill_groups`): prefix, then per recursion ``route`` + ``recursion`` on the
  rows that still have routed tokens (rows with none are gathered out; within a row ``recursion``
  compacts the routed tokens), then suffix; the last token of a chunk that ends its prompt samples.
* Lockstep decode [E, 1]: per recursion, route the rows still in, keep the routed ones by gathering
  (an exited token is never in a block call), ``run_block`` + ``update`` on them.
* Depth-wise decode: items carry their hidden state across steps (``_Carry``: states [I, d] and
  their router fields). One ``run_block`` per step on the scheduled items whatever their
  recursion: the :class:`PagedCache` binding says which recursion stream each row reads and
  writes, and ``update`` takes a per-row recursion. With per-loop LoRA (``relaxation_rank > 0``)
  items are grouped by recursion (one call per recursion present), since each loop has its own
  LoRA weights. Then each item is routed for its next recursion (grouped by recursion: one router
  per recursion); those that stop, or finished N_r, go to suffix + head and sample.

Host syncs per step: the router decisions (one transfer) and the sampled tokens (one transfer).

Length: the three decode paths (prefill, lockstep, depth-wise) read side by side in one file.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from depthmux.engine.kv_manager import MAIN, KVManager, PagedCache
from depthmux.engine.sampling import SamplingParams, sample_next_tokens
from depthmux.engine.scheduler import PrefillChunk, SchedulerDecision, StepResult, WorkItem
from depthmux.engine.stats import EngineStats
from depthmux.recursion import RecursiveForCausalLM, RouteDecision, TokenContext
from depthmux.recursion.modeling import rope_cos_sin


def _rows(t: torch.Tensor | None, idx: torch.Tensor) -> torch.Tensor | None:
    return None if t is None else t.index_select(0, idx)


def _decision_rows(dec: RouteDecision, idx: torch.Tensor) -> RouteDecision:
    """A decision restricted to the rows ``idx`` [R'] (sequences), all fields [R', ...]."""
    return RouteDecision(
        dec.recursion,
        dec.kind,
        _rows(dec.selected, idx),
        _rows(dec.gate, idx),
        _rows(dec.depth, idx),
        _rows(dec.weight, idx),
        _rows(dec.first_state, idx),
    )


def _context_rows(ctx: TokenContext, idx: torch.Tensor, cache) -> TokenContext:
    return TokenContext(
        positions=_rows(ctx.positions, idx),
        slots=_rows(ctx.slots, idx),
        segments=_rows(ctx.segments, idx),
        write=_rows(ctx.write, idx),
        cos=_rows(ctx.cos, idx),
        sin=_rows(ctx.sin, idx),
        cache=cache,
    )


MAX_PREFILL_PADDING = 0.125
"""Prefill chunks run in [P, M] calls right-padded to their longest chunk; chunks are grouped so that
padding is at most this share of a call's positions (padding is computed for nothing)."""


def prefill_groups(chunks: list[PrefillChunk], max_padding: float = MAX_PREFILL_PADDING) -> list[list[PrefillChunk]]:
    """The chunks, longest first, in groups of similar length: each group's padding ``P * M - sum(lengths)``
    stays at most ``max_padding * P * M`` (M = the group's longest chunk)."""
    groups: list[list[PrefillChunk]] = []
    for c in sorted(chunks, key=lambda c: -len(c.token_ids)):
        if groups:
            g = groups[-1]
            n, M = len(g) + 1, len(g[0].token_ids)
            if n * M - sum(len(x.token_ids) for x in g) - len(c.token_ids) <= max_padding * n * M:
                g.append(c)
                continue
        groups.append([c])
    return groups


@dataclass
class _Carry:
    """Depth-wise items in flight: ``ids`` (host) and, row for row, their state ``h`` [I, d], next
    recursion ``rec`` (host), expert-choice ``gate`` [I], token-choice ``depth`` / ``weight`` [I] and
    ``first`` [I, d] (H^1), and ``position`` / ``request_id`` (host)."""

    ids: list[int]
    request_ids: list[str]
    positions: list[int]
    rec: list[int]
    h: torch.Tensor
    gate: torch.Tensor | None
    depth: torch.Tensor | None
    weight: torch.Tensor | None
    first: torch.Tensor | None

    def select(self, rows: list[int]) -> _Carry:
        idx = torch.tensor(rows, dtype=torch.long, device=self.h.device)
        return _Carry(
            [self.ids[i] for i in rows],
            [self.request_ids[i] for i in rows],
            [self.positions[i] for i in rows],
            [self.rec[i] for i in rows],
            self.h.index_select(0, idx),
            _rows(self.gate, idx),
            _rows(self.depth, idx),
            _rows(self.weight, idx),
            _rows(self.first, idx),
        )

    @staticmethod
    def cat(parts: list[_Carry]) -> _Carry:
        nonempty = [p for p in parts if p.ids]
        if len(nonempty) <= 1:
            return nonempty[0] if nonempty else parts[0]
        parts = nonempty

        def join(name):
            ts = [getattr(p, name) for p in parts]
            return None if ts[0] is None else torch.cat(ts)

        def flat(name):
            return [v for p in parts for v in getattr(p, name)]

        return _Carry(
            flat("ids"),
            flat("request_ids"),
            flat("positions"),
            flat("rec"),
            join("h"),
            join("gate"),
            join("depth"),
            join("weight"),
            join("first"),
        )


class ModelRunner:
    """Runs scheduler decisions on a :class:`RecursiveForCausalLM` (module docstring).

    Args:
        model: the model, in eval mode, on its device.
        kv: the :class:`KVManager` whose pages hold the KV.
        depth_policy: "depthwise" or "lockstep".
        max_len: the context length (positions < max_len).
        seed: seed of the generator shared by unseeded sampling requests.
    """

    def __init__(self, model: RecursiveForCausalLM, kv: KVManager, depth_policy: str, max_len: int, seed: int = 0):
        self.model, self.body, self.kv = model, model.model, kv
        self.depth_policy, self.max_len = depth_policy, max_len
        cfg = model.config
        self.config = cfg
        self.n_steps = self.body.num_recursion_steps
        self.loop = self.body.recursion_loop
        self.kind = (cfg.mor_router or "none") if self.loop else "none"
        self.lora_block = self.loop and cfg.relaxation_rank > 0
        # the first route keeps every token (no host sync needed): no router, token-choice, capacity 1, shared KV
        self.first_keeps_all = (
            self.kind != "expert" or cfg.capacities()[0] >= 1.0 or (self.loop and cfg.mor_kv == "share_first")
        )
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.default_generator = torch.Generator(device=self.device).manual_seed(seed)
        self.generators: dict[str, torch.Generator | None] = {}
        self.carry: _Carry | None = None
        self.written: dict[tuple[str, int], int] = {}  # entries appended this step, per (request, stream)
        self.stats = EngineStats(
            exits_by_depth=[0] * (self.n_steps + 1), decode_exits_by_depth=[0] * (self.n_steps + 1)
        )

    # -- helpers ----------------------------------------------------------------------------
    def _context(self, positions: torch.Tensor, write: torch.Tensor, cache) -> TokenContext:
        cos, sin = rope_cos_sin(positions, self.config.head_dim, self.config.rope_theta, self.dtype)
        return TokenContext(
            positions=positions,
            slots=positions,
            segments=torch.zeros_like(positions),
            write=write,
            cos=cos,
            sin=sin,
            cache=cache,
        )

    def _cache(self, rows: int, main=None, block=None) -> PagedCache:
        return PagedCache(self.kv.spec, main, block, rows, self.max_len, self.device)

    def append_base(self, request_id: str, stream: int, num_new: int) -> int:
        """Where a stream's next ``num_new`` entries go (its length plus what this step already appended
        there), recorded for :attr:`StepResult.kv_written`. The pages were given by the scheduler."""
        key = (request_id, stream)
        done = self.written.get(key, 0)
        self.written[key] = done + num_new
        return self.kv.length(request_id, stream) + done

    def _block_binding(self, request_ids: list[str], recs: list[int], counts: list[int] | None = None):
        """Bind the rows' recursion streams, each row appending its entries (1, or ``counts``) there."""
        keys, base, writes = [], [], []
        for i, (rid, r) in enumerate(zip(request_ids, recs, strict=True)):
            stream, w = self.kv.spec.stream_of(r)
            n = 1 if counts is None else counts[i]
            base.append(self.append_base(rid, stream, n) if w else self.kv.length(rid, stream))
            keys.append((rid, stream))
            writes.append(w)
        return self.kv.binding(keys, base, writes)

    def _generator(self, rid: str, params: SamplingParams) -> torch.Generator | None:
        if rid not in self.generators:
            self.generators[rid] = (
                torch.Generator(device=self.device).manual_seed(params.seed)
                if params.seed is not None and not params.greedy
                else None
            )
        return self.generators[rid]

    def _sample(self, hidden: torch.Tensor, request_ids: list[str], params: dict[str, SamplingParams]) -> list[int]:
        """hidden [N, d] final-normed states -> one token per row."""
        logits = self.model.logits(hidden[:, None])[:, 0]
        ps = [params[r] for r in request_ids]
        gens = [self._generator(r, p) for r, p in zip(request_ids, ps, strict=True)]
        tokens = sample_next_tokens(logits, ps, gens, self.default_generator)
        self.stats.generated_tokens += len(tokens)
        return tokens

    def _count_exits(self, ran: list[int]) -> None:
        """Decode tokens leaving the model after ``ran[i]`` recursions."""
        for d in ran:
            self.stats.exits_by_depth[d] += 1
            self.stats.decode_exits_by_depth[d] += 1
        self.stats.skipped_recursions += sum(self.n_steps - d for d in ran) if self.loop else 0

    def _block_call(self, items: int, padding: int = 0, decode: bool = True) -> None:
        s = self.stats
        s.block_calls += 1
        s.block_items += items
        s.block_padding += padding
        if decode:
            s.max_decode_block_items = max(s.max_decode_block_items, items)
        else:
            s.max_prefill_block_tokens = max(s.max_prefill_block_tokens, items)

    # -- a step -----------------------------------------------------------------------------
    @torch.no_grad()
    def forget(self, decision: SchedulerDecision) -> None:
        """Drop the state of requests released (finished, cancelled) or preempted and of dropped items.
        Called on every decision, empty ones included, so nothing of a gone request stays."""
        for rid in decision.released:
            self.generators.pop(rid, None)
        if decision.dropped_items and self.carry is not None:
            dropped = set(decision.dropped_items)
            self.carry = self.carry.select([i for i, it in enumerate(self.carry.ids) if it not in dropped])
            if not self.carry.ids:
                self.carry = None

    @torch.no_grad()
    def execute(self, decision: SchedulerDecision) -> StepResult:
        """Run one step; returns what the scheduler needs to advance its bookkeeping."""
        self.forget(decision)
        result = StepResult()
        self.written = result.kv_written
        self.stats.steps += 1
        for group in prefill_groups(decision.prefills):
            self._prefill(group, decision.params, result)
        if decision.prefills:  # report in the decision's order (groups run longest first)
            result.sampled = {
                c.request_id: result.sampled[c.request_id] for c in decision.prefills if c.request_id in result.sampled
            }
        if self.depth_policy == "lockstep":
            if decision.entering:
                self._decode_lockstep(decision.entering, decision.params, result)
        else:
            self._decode_depthwise(decision, result)
        return result

    def _prefill(self, chunks: list[PrefillChunk], params: dict[str, SamplingParams], result: StepResult) -> None:
        body, dev = self.body, self.device
        P, M = len(chunks), max(len(c.token_ids) for c in chunks)
        lengths = [len(c.token_ids) for c in chunks]
        ids = torch.tensor([c.token_ids + [0] * (M - len(c.token_ids)) for c in chunks], device=dev)
        write = torch.arange(M, device=dev)[None, :] < torch.tensor(lengths, device=dev)[:, None]
        positions = (torch.tensor([c.start for c in chunks], device=dev)[:, None] + torch.arange(M, device=dev)).clamp(
            max=self.max_len - 1
        )
        rids = [c.request_id for c in chunks]
        base = [self.append_base(c.request_id, MAIN, len(c.token_ids)) for c in chunks]
        main = self.kv.binding([(r, MAIN) for r in rids], base)
        ctx = self._context(positions, write, self._cache(P, main=main))
        self.stats.prefill_tokens += sum(lengths)
        x = body.prefix(body.embed(ids), ctx)
        dec = None
        ran = torch.zeros(P, M, dtype=torch.long, device=dev)
        for r in range(self.n_steps):
            dec = body.route(x, r, ctx, dec, routing="causal", losses=False)
            if not self.loop:
                x = body.recursion(x, dec, ctx)
                self._block_call(sum(lengths), P * M - sum(lengths), decode=False)
                ran += dec.selected.long()
                continue
            counts = dec.selected.long().sum(1).tolist()
            rows = [i for i, c in enumerate(counts) if c > 0]
            if not rows:
                break
            ran += dec.selected.long()
            block = self._block_binding([rids[i] for i in rows], [r] * len(rows), [counts[i] for i in rows])
            cache = self._cache(len(rows), block=block)
            n_real = sum(counts[i] for i in rows)
            self._block_call(n_real, len(rows) * max(counts[i] for i in rows) - n_real, decode=False)
            if len(rows) == P:
                x = body.recursion(x, dec, replace(ctx, cache=cache))
            else:
                idx = torch.tensor(rows, device=dev)
                sub = body.recursion(x.index_select(0, idx), _decision_rows(dec, idx), _context_rows(ctx, idx, cache))
                x = x.index_copy(0, idx, sub)
        x = body.suffix(x, ctx)
        depth_counts = torch.stack([((ran == d) & write).sum() for d in range(self.n_steps + 1)]).tolist()
        for d, c in enumerate(depth_counts):
            self.stats.exits_by_depth[d] += c
            if self.loop:
                self.stats.skipped_recursions += c * (self.n_steps - d)
        sampling = [i for i, c in enumerate(chunks) if c.samples]
        if sampling:
            idx = torch.tensor(sampling, device=dev)
            last = torch.tensor([lengths[i] - 1 for i in sampling], device=dev)
            tokens = self._sample(x[idx, last], [rids[i] for i in sampling], params)
            for i, t in zip(sampling, tokens, strict=True):
                result.sampled[rids[i]] = t

    def _enter(self, items: list[WorkItem]) -> tuple[torch.Tensor, TokenContext]:
        """Embed + prefix for decode tokens entering: states [E, 1, d] and their context (main streams)."""
        dev = self.device
        rids = [it.request_id for it in items]
        base = [self.append_base(it.request_id, MAIN, 1) for it in items]
        main = self.kv.binding([(r, MAIN) for r in rids], base)
        positions = torch.tensor([[it.position] for it in items], device=dev)
        ctx = self._context(positions, torch.ones_like(positions, dtype=torch.bool), self._cache(len(items), main=main))
        ids = torch.tensor([[it.token_id] for it in items], device=dev)
        self.stats.decode_tokens += len(items)
        return self.body.prefix(self.body.embed(ids), ctx), ctx

    def _decode_lockstep(self, items: list[WorkItem], params: dict[str, SamplingParams], result: StepResult) -> None:
        body = self.body
        x, ctx = self._enter(items)
        rids = [it.request_id for it in items]
        E = len(items)
        active = list(range(E))
        depth = [0] * E
        dec = None
        for r in range(self.n_steps):
            idx = torch.tensor(active, device=self.device)
            ctx_a = _context_rows(ctx, idx, ctx.cache)
            dec = body.route(x.index_select(0, idx), r, ctx_a, dec, routing="causal", losses=False)
            if r > 0 or not self.first_keeps_all:
                keep = dec.selected[:, 0].tolist()
                if not all(keep):
                    kept = [j for j, k in enumerate(keep) if k]
                    active = [active[j] for j in kept]
                    if not active:
                        break
                    dec = _decision_rows(dec, torch.tensor(kept, device=self.device))
                    idx = torch.tensor(active, device=self.device)
            if self.loop:
                binding = self._block_binding([rids[a] for a in active], [r] * len(active))
                cache = self._cache(len(active), block=binding)
            else:
                cache = ctx.cache
            ctx_a = _context_rows(ctx, idx, cache)
            h = x.index_select(0, idx)
            f = body.run_block(h, r, ctx_a)
            x = x.index_copy(0, idx, body.update(h, f, dec))
            self._block_call(len(active))
            for a in active:
                depth[a] += 1
        self._count_exits(depth)
        x = body.suffix(x, ctx)
        for rid, t in zip(rids, self._sample(x[:, 0], rids, params), strict=True):
            result.sampled[rid] = t

    def _decode_depthwise(self, decision: SchedulerDecision, result: StepResult) -> None:
        body, dev = self.body, self.device
        exits: list[_Carry] = []
        parts = [self.carry] if self.carry is not None else []
        if decision.entering:
            x, ctx = self._enter(decision.entering)
            dec = body.route(x, 0, ctx, None, routing="causal", losses=False)
            entering = _Carry(
                [it.item_id for it in decision.entering],
                [it.request_id for it in decision.entering],
                [it.position for it in decision.entering],
                [0] * len(decision.entering),
                x[:, 0],
                None if dec.gate is None else dec.gate[:, 0],
                None if dec.depth is None else dec.depth[:, 0],
                None if dec.weight is None else dec.weight[:, 0],
                None if dec.first_state is None else dec.first_state[:, 0],
            )
            if not self.first_keeps_all:
                keep = dec.selected[:, 0].tolist()
                out = [i for i, k in enumerate(keep) if not k]
                if out:
                    exits.append(entering.select(out))
                    entering = entering.select([i for i, k in enumerate(keep) if k])
            parts.append(entering)
        carry = _Carry.cat(parts) if parts else None
        ran_rows: list[int] = []
        if carry is not None and carry.ids:
            where = {it: i for i, it in enumerate(carry.ids)}
            ran_rows = [where[it.item_id] for it in decision.block_items if it.item_id in where]
        if ran_rows:
            batch = carry.select(ran_rows)
            result.ran_items = list(batch.ids)
            new_h = self._run_block_items(batch)
            # route each item for its next recursion (grouped: one router per recursion)
            nxt = [r + 1 for r in batch.rec]
            cont = torch.zeros(len(nxt), dtype=torch.bool, device=dev)
            gate = batch.gate.clone() if batch.gate is not None else None
            ones = torch.ones(len(nxt), 1, dtype=torch.bool, device=dev)
            for r in sorted({r for r in nxt if r < self.n_steps}):
                g = [i for i, v in enumerate(nxt) if v == r]
                gi = torch.tensor(g, device=dev)
                h_g = new_h.index_select(0, gi)[:, None]
                prev = RouteDecision(
                    r - 1,
                    self.kind,
                    ones[: len(g)],
                    _col(batch.gate, gi),
                    _col(batch.depth, gi),
                    _col(batch.weight, gi),
                    None if batch.first is None else batch.first[gi][:, None],
                )
                pos = torch.tensor([[batch.positions[i]] for i in g], device=dev)
                ctx_g = self._context(pos, ones[: len(g)], None)
                d = body.route(h_g, r, ctx_g, prev, routing="causal", losses=False)
                cont[gi] = d.selected[:, 0]
                if gate is not None:
                    gate[gi] = d.gate[:, 0]
            keep = cont.tolist()
            batch.h, batch.gate, batch.rec = new_h, gate, nxt
            stay = [i for i, k in enumerate(keep) if k]
            leave = [i for i, k in enumerate(keep) if not k]
            if leave:
                exits.append(batch.select(leave))
            ran_set = set(ran_rows)
            rest = carry.select([i for i in range(len(carry.ids)) if i not in ran_set])
            carry = _Carry.cat([rest, batch.select(stay)]) if stay else rest
            for i in stay:
                result.depths[batch.ids[i]] = nxt[i]
        self.carry = carry if carry is not None and carry.ids else None
        if exits:
            out = _Carry.cat(exits)
            result.exited.extend(out.ids)
            self._count_exits(out.rec)
            base = list(out.positions)
            main = self.kv.binding([(r, MAIN) for r in out.request_ids], base)
            pos = torch.tensor([[p] for p in out.positions], device=dev)
            ctx = self._context(pos, torch.ones_like(pos, dtype=torch.bool), self._cache(len(base), main=main))
            hidden = body.suffix(out.h[:, None], ctx)[:, 0]
            tokens = self._sample(hidden, out.request_ids, decision.params)
            for rid, t in zip(out.request_ids, tokens, strict=True):
                result.sampled[rid] = t

    def _run_block_items(self, batch: _Carry) -> torch.Tensor:
        """The shared block at each item's own recursion, then the update rule: [n, d] -> [n, d]."""
        body, dev = self.body, self.device
        n = len(batch.ids)
        pos = torch.tensor([[p] for p in batch.positions], device=dev)
        ones = torch.ones(n, 1, dtype=torch.bool, device=dev)
        h = batch.h[:, None]
        rec = torch.tensor(batch.rec, device=dev)[:, None]
        dec = RouteDecision(
            rec,
            self.kind,
            ones,
            _col(batch.gate),
            _col(batch.depth),
            _col(batch.weight),
            None if batch.first is None else batch.first[:, None],
        )
        groups = sorted(set(batch.rec)) if self.lora_block else [None]
        if groups == [None]:
            cache = (
                self._cache(n, block=self._block_binding(batch.request_ids, batch.rec))
                if self.loop
                else self._cache(n, main=self.kv.binding([(r, MAIN) for r in batch.request_ids], batch.positions))
            )
            f = body.run_block(h, 0, self._context(pos, ones, cache))
            self._block_call(n)
            return body.update(h, f, dec)[:, 0]
        out = torch.empty_like(batch.h)
        for r in groups:
            g = [i for i, v in enumerate(batch.rec) if v == r]
            gi = torch.tensor(g, device=dev)
            cache = self._cache(len(g), block=self._block_binding([batch.request_ids[i] for i in g], [r] * len(g)))
            h_g = h.index_select(0, gi)
            f = body.run_block(h_g, r, self._context(pos.index_select(0, gi), ones[: len(g)], cache))
            self._block_call(len(g))
            dec_g = _decision_rows(dec, gi)
            dec_g.recursion = r
            out[gi] = body.update(h_g, f, dec_g)[:, 0]
        return out


def _col(t: torch.Tensor | None, idx: torch.Tensor | None = None) -> torch.Tensor | None:
    """A per-item field [n] as a [n, 1] decision field (rows ``idx`` when given)."""
    if t is None:
        return None
    if idx is not None:
        t = t.index_select(0, idx)
    return t[:, None]
