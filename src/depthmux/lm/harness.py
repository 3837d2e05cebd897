"""lm-evaluation-harness adapter: our causal LMs behind ``lm_eval.api.model.LM`` (issue 19, SPEC 4 few-shot).

Importing this module registers :class:`DepthmuxHarnessLM` under the name ``"depthmux"`` in
``lm_eval``'s model registry (``lm_eval`` is an optional extra: ``pip install 'depthmux[eval]'``), so
``lm_eval.simple_evaluate(model="depthmux", model_args="pretrained=smollm2", ...)`` runs it. Any model
:func:`depthmux.lm.load_lm` reads works: SmolLM2 / LLaMA folders, recursive and MoR models (MoR routes
with its decoding rule, the causal one, so padding never changes a real token's logits), early-exit
models (``exit="deep"`` or ``"shallow"``).

The three request types, each computed from the model's logits ``[B, T, V]`` on right-padded batches
(positions ``0..T-1`` per row, so padding only follows real tokens and a causal model never sees it):

* ``loglikelihood(context, continuation)``: ``sum log p(continuation tokens | context)`` and whether
  every continuation token is the argmax. The pair is tokenised as lm-eval's HF model does: the
  whole string, then the context alone; trailing spaces of the context move to the continuation; an
  empty context is replaced by the prefix token (BOS, else EOS). Inputs longer than ``max_length``
  keep their last ``max_length`` tokens.
* ``loglikelihood_rolling(text)``: the whole text's log-likelihood in disjoint windows of
  ``max_length`` tokens (``lm_eval.utils.get_rolling_token_windows``), the first conditioned on the
  prefix token.
* ``generate_until(context, gen_kwargs)``: greedy decoding by full recomputation (no KV cache; any
  model, no engine needed), stopped at the first ``until`` string, EOS or ``max_gen_toks``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from depthmux.early_exit import EarlyExitForCausalLM, ShallowExit
from depthmux.errors import DepthmuxError
from depthmux.lm.hf_adapter import as_causal_lm
from depthmux.lm.loading import load_lm, load_saved_tokenizer, pretrained_model_dir

HARNESS_NAME = "depthmux"
EXITS = ("deep", "shallow")


def _int_arg(name: str, value: Any, low: int) -> int:
    """lm-eval passes ``model_args`` as strings; ``"auto"`` batch sizes are not supported."""
    try:
        out = int(value)
    except (TypeError, ValueError):
        raise DepthmuxError(f"{name} must be an integer, got {value!r}") from None
    if out < low:
        raise DepthmuxError(f"{name} must be >= {low}, got {out}")
    return out


@register_model(HARNESS_NAME)
class DepthmuxHarnessLM(LM):
    """A depthmux causal LM as an lm-eval ``LM`` (see the module docstring).

    Args:
        pretrained: ``"smollm2"`` or a model / run / checkpoint folder (with its saved tokenizer).
        batch_size: sequences per forward (at most ``max_batch_tokens`` tokens per forward).
        max_length: longest input in tokens (default: the config's ``max_position_embeddings``,
            at most 2048).
        exit: early-exit models only: ``"deep"`` (the full model) or ``"shallow"`` (the exit).
        max_gen_toks: default generation budget of ``generate_until``.
        max_batch_tokens: cap on padded tokens per forward (bounds the ``[B, T, V]`` logits).
        model, tokenizer: an already-loaded model and tokenizer (tests, recipes) instead of ``pretrained``.
        device, max_batch_size, **_: accepted from lm-eval's runner; only ``cpu`` / ``cuda`` devices.
    """

    def __init__(
        self,
        pretrained: str = "smollm2",
        batch_size: int | str = 8,
        max_length: int | str | None = None,
        exit: str = "deep",
        max_gen_toks: int | str = 32,
        max_batch_tokens: int | str = 4096,
        model: torch.nn.Module | None = None,
        tokenizer=None,
        device: str | None = None,
        max_batch_size: int | None = None,
        **_: Any,
    ) -> None:
        super().__init__()
        if exit not in EXITS:
            raise DepthmuxError(f"exit must be deep or shallow, got {exit!r}")
        self.batch_size = _int_arg("batch_size", 8 if batch_size in (None, "auto") else batch_size, 1)
        self.max_gen_toks = _int_arg("max_gen_toks", max_gen_toks, 1)
        self.max_batch_tokens = _int_arg("max_batch_tokens", max_batch_tokens, 2)
        if model is None:
            path = pretrained_model_dir(str(pretrained))
            model = load_lm(path)
            tokenizer = tokenizer or load_saved_tokenizer(path)
        if tokenizer is None:
            raise DepthmuxError(f"{pretrained} has no saved tokenizer: few-shot tasks need one")
        if exit == "shallow":
            if not isinstance(model, EarlyExitForCausalLM):
                raise DepthmuxError("exit=shallow needs an early-exit model (from `depthmux ee train`)")
            model = ShallowExit(model)
        self.model = as_causal_lm(model).eval()
        self.tokenizer = tokenizer
        self._device = torch.device(device or "cpu")
        self.model.to(self._device)
        cfg_max = getattr(getattr(model, "config", None), "max_position_embeddings", None) or 2048
        self.max_length = _int_arg("max_length", max_length if max_length is not None else min(cfg_max, 2048), 2)
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if prefix is None:
            raise DepthmuxError("the tokenizer has neither a BOS nor an EOS token (needed as the prefix token)")
        self.prefix_token_id = int(prefix)

    # ------------------------------------------------------------------------------------------
    # tokens and logits

    def tok_encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Context and continuation tokens, split where lm-eval's HF model splits them."""
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        if not context:
            return [self.prefix_token_id], self.tok_encode(continuation)
        whole = self.tok_encode(context + continuation)
        ctx = self.tok_encode(context)
        return whole[: len(ctx)], whole[len(ctx) :]

    @torch.no_grad()
    def logits(self, rows: list[list[int]]) -> torch.Tensor:
        """Logits ``[B, T, V]`` of right-padded ``rows`` (position ids ``0..T-1`` in every row)."""
        T = max(len(r) for r in rows)
        ids = torch.full((len(rows), T), self.prefix_token_id, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        pos = torch.arange(T).expand(len(rows), T)
        ids, pos = ids.to(self._device), pos.to(self._device)
        return self.model(input_ids=ids, position_ids=pos, use_cache=False).logits

    def _batches(self, lengths: list[int]) -> list[list[int]]:
        """Indices grouped longest first, at most ``batch_size`` rows and ``max_batch_tokens`` padded tokens."""
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        batches: list[list[int]] = []
        for i in order:
            b = batches[-1] if batches else None
            if b and len(b) < self.batch_size and lengths[b[0]] * (len(b) + 1) <= self.max_batch_tokens:
                b.append(i)
            else:
                batches.append([i])
        return batches

    def score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """``(sum log p(continuation | context), continuation is greedy)`` for token pairs."""
        inputs = [(ctx + cont)[-(self.max_length + 1) :][:-1] for ctx, cont in pairs]
        out: list[tuple[float, bool] | None] = [None] * len(pairs)
        for batch in self._batches([len(x) for x in inputs]):
            logits = self.logits([inputs[i] for i in batch])
            for row, i in enumerate(batch):
                cont = pairs[i][1]
                n = len(inputs[i])
                logp = F.log_softmax(logits[row, n - len(cont) : n].float(), dim=-1)
                target = torch.tensor(cont, device=logp.device)
                ll = float(logp.gather(-1, target[:, None]).sum())
                out[i] = (ll, bool((logp.argmax(-1) == target).all()))
        return out  # type: ignore[return-value]

    # ------------------------------------------------------------------------------------------
    # lm_eval.api.model.LM

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = []
        for req in requests:
            ctx, cont = self.encode_pair(*req.args)
            if not cont:
                raise DepthmuxError(f"empty continuation for context {req.args[0][-40:]!r}")
            pairs.append((ctx, cont))
        return self.score(pairs)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        results = []
        for req in requests:
            (text,) = req.args
            windows = [
                make_disjoint_window(w)
                for w in get_rolling_token_windows(
                    token_list=self.tok_encode(text),
                    prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length,
                    context_len=1,
                )
            ]
            results.append(sum(ll for ll, _ in self.score(windows)) if windows else 0.0)
        return results

    @torch.no_grad()
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        results = []
        eos = self.tokenizer.eos_token_id
        for req in requests:
            context, kwargs = req.args
            kwargs = dict(kwargs or {})
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            budget = _int_arg("max_gen_toks", kwargs.pop("max_gen_toks", self.max_gen_toks), 1)
            if kwargs.get("do_sample") or float(kwargs.get("temperature", 0.0) or 0.0) > 0:
                raise DepthmuxError("generate_until: only greedy decoding is supported (do_sample=False)")
            ids = (self.tok_encode(context) or [self.prefix_token_id])[-max(1, self.max_length - budget) :]
            new: list[int] = []
            text = ""
            for _ in range(budget):
                nxt = int(self.logits([ids + new])[0, -1].argmax())
                if nxt == eos:
                    break
                new.append(nxt)
                text = self.tokenizer.decode(new, skip_special_tokens=True)
                if any(s and s in text for s in until):
                    break
            for s in until:
                if s and s in text:
                    text = text.split(s)[0]
            results.append(text)
        return results
