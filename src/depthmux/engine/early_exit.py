"""Early-exit decoding inside the engine (SPEC 2, SPEC 5): FREE's synchronized parallel decoding and a
self-speculative mode, at any batch size, on an :class:`~depthmux.early_exit.EarlyExitForCausalLM`.

:class:`EarlyExitLLM` is the engine's :class:`~depthmux.engine.LLM` (same scheduler, paged KV manager,
continuous batching, prefill) whose runner, :class:`EarlyExitRunner`, replaces the decode step.
Every decode token enters through the shallow layers 0..L_s-1 (writing their KV in the sequence's
main stream); then, per :class:`EarlyExitPolicy`:

* ``mode="exit"`` (FREE). Confidence = p_top1 - p_top2 of the shallow exit (SPEC 2). A row whose
  confidence is above the threshold emits the shallow token and KEEPS its state h_s (the runner holds
  it with its position). Every other row runs the deep layers L_s..L-1 on [its kept tokens + the
  current token] in ONE causal pass that writes the missing deep KV at the kept tokens' own stream
  entries (synchronized parallel decoding); its token comes from the deep exit. Rows have different
  numbers of kept tokens: the deep rows are batched together, left-aligned and right-padded
  ([D, M, d], M = 1 + most kept tokens), filler entries never written; exiting rows skip the deep
  layers entirely. With an :class:`~depthmux.early_exit.AdaptiveThreshold` the deep pass also
  compares each kept token with the deep model's token at its position (and the current token's
  shallow and deep tokens): those (confidence, agreement) pairs refresh the threshold.
  With a learned confidence (``EarlyExitPolicy.confidence`` "head", the default for a model whose
  ``config.exit_confidence`` is "head": CALM's early-exit classifier, issue 19 point 3) the confidence
  is ``model.head_confidence(h_s)`` (d + 1 multiply-adds a row) and only the EXITING rows compute the
  shallow LM head, for their token; the other rows go to the deep pass without it. The adaptive
  threshold is refused there (its pairs need the shallow token of every deep row, the very LM head the
  head avoids); ``measure`` works (it compares the kept tokens only).
* ``mode="speculative"`` (LayerSkip's self-speculation). The shallow exit drafts up to k tokens (k
  shallow steps, batched over rows); one deep pass over [current token + drafts] (the last draft first
  runs the shallow layers) verifies them. Greedy requests accept the longest agreeing prefix plus the
  deep model's next token, so the output equals deep greedy decoding; sampled requests draft from the
  shallow exit's distribution and use the standard speculative acceptance rule
  (:func:`speculative_accept`), which keeps the deep model's sampling distribution. The accepted drafts
  go back to the scheduler as ``StepResult.accepted``; the scheduler, which planned the pages of the
  ``1 + drafts`` entries, cuts the rejected drafts' entries from the stream (``KVManager.truncate``),
  so the KV stays exactly the deep model's. A row drafts at most ``WorkItem.drafts`` tokens (the
  scheduler's cap: k, ``max_new_tokens - generated - 1`` so its KV stays within its reservation, and
  the context).

Threshold 1.0 exits nothing (either confidence is <= 1), so ``mode="exit"`` then decodes exactly as the
deep model. Host syncs per decode step: exit mode 2-3 (exit decisions, tokens), speculative k + 1.

Length: the exit and speculative policies share one runner extension and one KV bookkeeping;
splitting them would duplicate the ragged-batch plumbing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.nn.utils.rnn import pad_sequence

from depthmux.early_exit import (
    EXIT_CONFIDENCES,
    AdaptiveThreshold,
    EarlyExitForCausalLM,
    check_threshold,
    require_early_exit,
    top2_margin,
)
from depthmux.engine.kv_manager import MAIN, KVManager
from depthmux.engine.llm import LLM
from depthmux.engine.runner import ModelRunner
from depthmux.engine.sampling import SamplingParams, sample_next_tokens, sampling_probs
from depthmux.engine.scheduler import SchedulerDecision, StepResult, WorkItem
from depthmux.errors import DepthmuxError
from depthmux.utils.checks import check_int

EARLY_EXIT_MODES = ("exit", "speculative")


@dataclass
class EarlyExitPolicy:
    """How the engine uses the shallow exit (module docstring).

    Attributes:
        mode: "exit" (FREE) or "speculative" (self-speculative).
        threshold: fixed exit threshold in [0, 1]: a token exits when its confidence is ABOVE it.
        adaptive: an :class:`AdaptiveThreshold` (exit mode) that replaces ``threshold`` once fitted.
        draft_tokens: k >= 1, drafts per verification (speculative mode).
        measure: exit mode, also compare every kept token with the deep model's token at its position
            (one LM head per kept token) to count wrong exits; always on with ``adaptive``.
        max_kept: exit mode, a row holding this many kept tokens runs the deep layers at its next token
            whatever its confidence (None: no bound, as FREE). It bounds the deep pass and makes sure
            the adaptive threshold keeps receiving verified pairs even when nearly every token exits.
        confidence: exit mode, "margin" (FREE's p_top1 - p_top2: the shallow LM head on every row), "head"
            (the model's learned confidence head: the LM head on exiting rows only), or None: the model's
            own (``config.exit_confidence``).
    """

    mode: str = "exit"
    threshold: float = 1.0
    adaptive: AdaptiveThreshold | None = None
    draft_tokens: int = 4
    measure: bool = False
    max_kept: int | None = 16
    confidence: str | None = None

    def validate(self) -> EarlyExitPolicy:
        if self.mode not in EARLY_EXIT_MODES:
            raise DepthmuxError(f"early-exit mode must be one of {', '.join(EARLY_EXIT_MODES)}, got {self.mode!r}")
        check_threshold(self.threshold)
        check_int("draft tokens k", self.draft_tokens, 1)
        check_int("max kept tokens", self.max_kept, 1, allow_none=True)
        if self.adaptive is not None and not isinstance(self.adaptive, AdaptiveThreshold):
            raise DepthmuxError(f"adaptive must be an AdaptiveThreshold, got {type(self.adaptive).__name__}")
        if self.confidence is not None and self.confidence not in EXIT_CONFIDENCES:
            raise DepthmuxError(
                f"exit confidence must be one of {', '.join(EXIT_CONFIDENCES)}, got {self.confidence!r}"
            )
        return self

    def uses_head(self, model: EarlyExitForCausalLM) -> bool:
        """Whether exit mode decides with ``model``'s learned confidence head (``confidence`` or the model's
        own); a head asked of a model without one, or with the adaptive threshold, is one line."""
        confidence = self.confidence or model.config.exit_confidence
        if self.mode != "exit" or confidence != "head":
            return False
        if not model.has_exit_head:
            raise DepthmuxError(
                "exit confidence 'head' needs a model with a trained confidence head: run 'depthmux ee train-head'"
            )
        if self.adaptive is not None:
            raise DepthmuxError(
                "the adaptive threshold needs the shallow exit's token at every deep row, which the learned "
                "confidence head skips: use a fixed threshold (or confidence 'margin')"
            )
        return True

    def current_threshold(self) -> float:
        return self.adaptive.threshold if self.adaptive is not None else self.threshold


@dataclass
class EarlyExitStats:
    """Decode counters of :class:`EarlyExitRunner` (no timings).

    Attributes:
        shallow_tokens: decode tokens that ran the shallow layers (drafts included).
        exited_tokens: tokens emitted from the shallow exit (exit mode).
        deep_passes: (row, step) pairs that ran the deep layers in decode.
        deep_tokens: tokens the deep layers computed in decode (kept + current; speculative: drafts + 1).
        max_kept: most kept tokens filled in by one row's deep pass.
        verified_exits, wrong_exits: exited tokens later compared with the deep model, and how many differed
            (exit mode with ``measure`` or ``adaptive``).
        drafted_tokens, accepted_tokens: speculative drafts made and accepted.
        thresholds: the threshold at each decode step (exit mode).
    """

    shallow_tokens: int = 0
    exited_tokens: int = 0
    deep_passes: int = 0
    deep_tokens: int = 0
    max_kept: int = 0
    verified_exits: int = 0
    wrong_exits: int = 0
    drafted_tokens: int = 0
    accepted_tokens: int = 0
    thresholds: list[float] = field(default_factory=list)

    def exit_rate(self) -> float:
        n = self.exited_tokens + self.deep_passes
        return self.exited_tokens / n if n else 0.0

    def wrong_exit_rate(self) -> float:
        return self.wrong_exits / self.verified_exits if self.verified_exits else 0.0

    def acceptance_rate(self) -> float:
        return self.accepted_tokens / self.drafted_tokens if self.drafted_tokens else 0.0

    def as_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "thresholds"}
        d.update(
            exit_rate=self.exit_rate(),
            wrong_exit_rate=self.wrong_exit_rate(),
            acceptance_rate=self.acceptance_rate(),
            final_threshold=self.thresholds[-1] if self.thresholds else None,
        )
        return d


@dataclass
class _Kept:
    """A sequence's exited tokens whose deep KV is missing: states h_s [d], positions, confidences
    (0-dim tensors), and the tokens their shallow exit emitted."""

    h: list[torch.Tensor] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    confidence: list[torch.Tensor] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)


class EarlyExitRunner(ModelRunner):
    """The engine's runner with the early-exit decode step (module docstring); prefill is the engine's
    (the full model: deep KV for every prompt token, first token from the deep exit).

    Args: as :class:`ModelRunner` (depth policy "lockstep"), plus ``policy``. Drafts are capped by the
    scheduler (``WorkItem.drafts``); the runner appends KV only where the scheduler gave pages.
    """

    def __init__(
        self,
        model: EarlyExitForCausalLM,
        kv: KVManager,
        max_len: int,
        seed: int,
        policy: EarlyExitPolicy,
    ):
        super().__init__(model, kv, "lockstep", max_len, seed)
        self.ee = require_early_exit(model)
        self.policy = policy.validate()
        self.use_head = self.policy.uses_head(self.ee)
        self.kept: dict[str, _Kept] = {}
        self.ee_stats = EarlyExitStats()

    def forget(self, decision: SchedulerDecision) -> None:
        for rid in (*decision.released, *decision.preempted):
            self.kept.pop(rid, None)  # a preempted request is recomputed by a full prefill
        super().forget(decision)

    def _decode_lockstep(self, items: list[WorkItem], params: dict[str, SamplingParams], result: StepResult) -> None:
        if self.policy.mode == "exit":
            self._decode_exit(items, params, result)
        else:
            self._decode_speculative(items, params, result)

    # -- helpers ----------------------------------------------------------------------------
    def _shallow_step(self, rids: list[str], tokens: list[int], positions: list[int]) -> torch.Tensor:
        """One new token per row through the shallow layers (entries allocated in the main streams):
        returns h_s [R, d]."""
        dev = self.device
        base = [self.append_base(r, MAIN, 1) for r in rids]
        main = self.kv.binding([(r, MAIN) for r in rids], base)
        pos = torch.tensor([[p] for p in positions], device=dev)
        ctx = self._context(pos, torch.ones_like(pos, dtype=torch.bool), self._cache(len(rids), main=main))
        h = self.ee.shallow(self.body.embed(torch.tensor([[t] for t in tokens], device=dev)), ctx)
        self.ee_stats.shallow_tokens += len(rids)
        return h[:, 0]

    def _deep_pass(
        self, rids: list[str], states: list[torch.Tensor], starts: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The deep layers on each row's tokens ``states[i]`` [n_i, d] at positions starts[i] .. starts[i] + n_i - 1
        (their entries already allocated), batched left-aligned: returns (h_d [R, M, d], real [R, M])."""
        dev = self.device
        lengths = torch.tensor([s.shape[0] for s in states], device=dev)
        h = pad_sequence(states, batch_first=True)  # [R, M, d]
        M = h.shape[1]
        real = torch.arange(M, device=dev)[None, :] < lengths[:, None]
        pos = (torch.tensor(starts, device=dev)[:, None] + torch.arange(M, device=dev)[None, :]) * real
        main = self.kv.binding([(r, MAIN) for r in rids], starts)
        ctx = self._context(pos, real, self._cache(len(rids), main=main))
        self.ee_stats.deep_passes += len(rids)
        self.ee_stats.deep_tokens += int(sum(s.shape[0] for s in states))
        return self.ee.deep(h, ctx), real

    def _tokens(self, logits: torch.Tensor, rids: list[str], params: dict[str, SamplingParams]) -> list[int]:
        ps = [params[r] for r in rids]
        gens = [self._generator(r, p) for r, p in zip(rids, ps, strict=True)]
        tokens = sample_next_tokens(logits, ps, gens, self.default_generator)
        self.stats.generated_tokens += len(tokens)
        return tokens

    # -- FREE: synchronized parallel decoding -------------------------------------------------
    def _decode_exit(self, items: list[WorkItem], params: dict[str, SamplingParams], result: StepResult) -> None:
        ee, st, pol = self.ee, self.ee_stats, self.policy
        rids = [it.request_id for it in items]
        self.stats.decode_tokens += len(items)
        h_s = self._shallow_step(rids, [it.token_id for it in items], [it.position for it in items])
        logits_s = None
        if self.use_head:
            conf = ee.head_confidence(h_s)  # [E]: no LM head yet
        else:
            logits_s = ee.exit_logits(h_s[:, None])[:, 0]  # [E, V]
            conf = top2_margin(logits_s)  # [E]
        threshold = pol.current_threshold()
        st.thresholds.append(threshold)
        exits = (conf > threshold).tolist()
        if pol.max_kept is not None:
            exits = [
                e and len(self.kept[r].tokens) < pol.max_kept if r in self.kept else e
                for e, r in zip(exits, rids, strict=True)
            ]
        out = [i for i, e in enumerate(exits) if e]
        deep = [i for i, e in enumerate(exits) if not e]
        if out:
            idx = torch.tensor(out, device=self.device)
            if logits_s is None:  # the learned head decided: the LM head on the exiting rows only [X, V]
                logits_out = ee.exit_logits(h_s.index_select(0, idx)[:, None])[:, 0]
            else:
                logits_out = logits_s.index_select(0, idx)
            tokens = self._tokens(logits_out, [rids[i] for i in out], params)
            for i, t in zip(out, tokens, strict=True):
                kept = self.kept.setdefault(rids[i], _Kept())
                kept.h.append(h_s[i])
                kept.positions.append(items[i].position)
                kept.confidence.append(conf[i])
                kept.tokens.append(t)
                result.sampled[rids[i]] = t
            st.exited_tokens += len(out)
        if not deep:
            return
        d_rids = [rids[i] for i in deep]
        kept = [self.kept.pop(r, _Kept()) for r in d_rids]
        states = [torch.stack([*k.h, h_s[i]]) for k, i in zip(kept, deep, strict=True)]
        starts = [k.positions[0] if k.positions else items[i].position for k, i in zip(kept, deep, strict=True)]
        st.max_kept = max(st.max_kept, max(len(k.tokens) for k in kept))
        h_d, real = self._deep_pass(d_rids, states, starts)
        last = real.long().sum(1) - 1
        rows = torch.arange(len(deep), device=self.device)
        logits_d = ee.exit_logits(h_d[rows, last][:, None])[:, 0]  # [D, V]
        tokens = self._tokens(logits_d, d_rids, params)
        for r, t in zip(d_rids, tokens, strict=True):
            result.sampled[r] = t
        if pol.adaptive is not None or pol.measure:
            d_idx = torch.tensor(deep, device=self.device)
            self._compare(
                kept,
                h_d,
                real,
                last,
                conf.index_select(0, d_idx),
                None if logits_s is None else logits_s.index_select(0, d_idx).argmax(-1),
                logits_d.argmax(-1),
            )

    def _compare(
        self,
        kept: list[_Kept],
        h_d: torch.Tensor,
        real: torch.Tensor,
        last: torch.Tensor,
        conf_now: torch.Tensor,
        shallow_now: torch.Tensor | None,
        deep_now: torch.Tensor,
    ) -> None:
        """(confidence, shallow == deep) pairs of this deep pass: every kept token (its emitted token vs the
        deep model's at its position) and every current token (not with the learned head: ``shallow_now``
        None, its shallow token was never computed); counts wrong exits, refreshes the threshold."""
        conf, agree = ([conf_now], [shallow_now == deep_now]) if shallow_now is not None else ([], [])
        was_kept = real & (torch.arange(real.shape[1], device=real.device)[None, :] < last[:, None])  # [D, M]
        if bool(was_kept.any()):
            deep_kept = self.ee.exit_logits(h_d[was_kept][:, None])[:, 0].argmax(-1)
            emitted = torch.tensor([t for k in kept for t in k.tokens], device=deep_kept.device)
            right = deep_kept == emitted
            self.ee_stats.verified_exits += int(right.numel())
            self.ee_stats.wrong_exits += int((~right).sum())
            conf.append(torch.stack([c for k in kept for c in k.confidence]))
            agree.append(right)
        if self.policy.adaptive is not None and conf:
            self.policy.adaptive.update(torch.cat(conf), torch.cat(agree))

    # -- self-speculative decoding ------------------------------------------------------------
    def _decode_speculative(self, items: list[WorkItem], params: dict[str, SamplingParams], result: StepResult) -> None:
        ee, st = self.ee, self.ee_stats
        E = len(items)
        rids = [it.request_id for it in items]
        ps = [params[r] for r in rids]
        gens = [self._generator(r, p) or self.default_generator for r, p in zip(rids, ps, strict=True)]
        self.stats.decode_tokens += E
        budget = [it.drafts for it in items]  # the scheduler's cap (k, remaining tokens, context), pages planned
        current = [it.token_id for it in items]
        drafts: list[list[int]] = [[] for _ in range(E)]
        draft_probs: list[list[torch.Tensor]] = [[] for _ in range(E)]  # q of sampled rows' drafts [V]
        states: list[list[torch.Tensor]] = [[] for _ in range(E)]
        for j in range(max(budget)):
            rows = [i for i in range(E) if budget[i] > j]
            h = self._shallow_step(
                [rids[i] for i in rows], [current[i] for i in rows], [items[i].position + j for i in rows]
            )
            logits = ee.exit_logits(h[:, None])[:, 0]  # [R, V]
            tokens = logits.argmax(-1).tolist()
            for r, i in enumerate(rows):
                if not ps[i].greedy:  # draft from the shallow exit's own sampling distribution q
                    q = sampling_probs(logits[r : r + 1], [ps[i]])[0]
                    draft_probs[i].append(q)
                    tokens[r] = int(torch.multinomial(q, 1, generator=gens[i]))
                states[i].append(h[r])
                drafts[i].append(tokens[r])
                current[i] = tokens[r]
        st.drafted_tokens += sum(budget)
        # verification: the last token through the shallow layers, then one deep pass over every row's tokens
        h_last = self._shallow_step(rids, current, [it.position + b for it, b in zip(items, budget, strict=True)])
        seqs = [torch.stack([*states[i], h_last[i]]) for i in range(E)]
        h_d, _ = self._deep_pass(rids, seqs, [it.position for it in items])
        logits_d = ee.exit_logits(h_d)  # [E, M, V]: the deep model's next-token logits after each position
        greedy = logits_d.argmax(-1).tolist()
        for i in range(E):
            if ps[i].greedy:
                a = 0
                while a < budget[i] and drafts[i][a] == greedy[i][a]:
                    a += 1
                nxt = greedy[i][a]
            else:
                p = list(sampling_probs(logits_d[i, : budget[i] + 1], [ps[i]] * (budget[i] + 1)))
                a, nxt = speculative_accept(drafts[i], draft_probs[i], p, gens[i])
            st.accepted_tokens += a
            self.stats.generated_tokens += a + 1
            result.accepted[rids[i]] = drafts[i][:a]
            result.sampled[rids[i]] = nxt


def speculative_accept(
    drafts: list[int], q: list[torch.Tensor], p: list[torch.Tensor], generator: torch.Generator | None
) -> tuple[int, int]:
    """The standard speculative acceptance rule (Leviathan et al.; Chen et al.), which keeps the target
    distribution: draft ``x_j`` ~ ``q[j]`` is accepted with probability ``min(1, p[j][x_j] / q[j][x_j])``;
    at the first rejection the next token is drawn from ``normalise(max(0, p[j] - q[j]))``; when every
    draft is accepted, from ``p[k]``. ``p`` has one more entry than ``drafts``. Returns (accepted count,
    next token)."""
    for j, x in enumerate(drafts):
        u = float(torch.rand((), generator=generator, device=p[j].device))
        if u * float(q[j][x]) <= float(p[j][x]):  # u < p/q without dividing by a tiny q
            continue
        residual = (p[j] - q[j]).clamp(min=0)
        total = residual.sum()
        dist = residual / total if float(total) > 0 else p[j]
        return j, int(torch.multinomial(dist, 1, generator=generator))
    return len(drafts), int(torch.multinomial(p[len(drafts)], 1, generator=generator))


class EarlyExitLLM(LLM):
    """The engine serving an :class:`~depthmux.early_exit.EarlyExitForCausalLM` with an early-exit
    :class:`EarlyExitPolicy` (module docstring). A model without a shallow exit is a one-line error.

    Args: ``model``, ``tokenizer`` and the engine options of :class:`LLM` (the depth policy is always
    "lockstep": the model has no recursion loop), plus ``policy``.
    """

    def __init__(self, model, tokenizer=None, *, policy: EarlyExitPolicy | None = None, seed: int = 0, **engine_kwargs):
        model = require_early_exit(model)
        policy = (policy or EarlyExitPolicy()).validate()
        policy.uses_head(model)  # a head the model lacks, or with the adaptive threshold: one line before any work
        if engine_kwargs.get("depth_policy", "lockstep") != "lockstep":
            raise DepthmuxError("early-exit decoding runs every layer in one step: depth_policy must be 'lockstep'")
        engine_kwargs["depth_policy"] = "lockstep"
        engine_kwargs["max_draft_tokens"] = policy.draft_tokens if policy.mode == "speculative" else 0
        self.policy = policy

        def factory(m, kv, max_len, s):
            return EarlyExitRunner(m, kv, max_len, s, policy)

        super().__init__(model, tokenizer, seed=seed, runner_factory=factory, **engine_kwargs)

    @property
    def early_exit_stats(self) -> EarlyExitStats:
        return self.runner.ee_stats
