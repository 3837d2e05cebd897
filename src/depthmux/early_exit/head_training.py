"""Training and judging the learned exit confidence (CALM's early-exit classifier, issue 19 point 3).

Labels are CALM's consistency labels: 1 where the shallow exit's argmax equals the deep exit's argmax at
that position, from ONE forward of the frozen early-exit model per batch of blocks
(:func:`collect_layer_features`). The head is then fitted on the stored states alone (:func:`fit_exit_head`:
binary cross-entropy, Adam; nothing else of the model changes), so training costs one forward per block
plus ``steps x batch x d`` multiply-adds.

* :func:`collect_layer_features` / :func:`collect_exit_features`: ``hs = norm(h_s)``, agreement labels and
  FREE's margin at every position that has a next-token target, at any exit layers (the sweep) or the
  model's own;
* :func:`fit_exit_head`: BCE on standardised states, folded back into the head's weights afterwards;
* :func:`train_exit_head`: the two above on a model (its head attached and trained);
* :func:`exit_head_report`: held-out AUC and accuracy of the head (and of the margin, for comparison)
  and, per threshold, the exit rate and the agreement of the exited tokens (:func:`exit_table`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from depthmux.early_exit.config import check_exit_layer
from depthmux.early_exit.head import ExitConfidenceHead, exit_table, roc_auc
from depthmux.early_exit.modeling import IGNORE_INDEX, EarlyExitForCausalLM, require_early_exit, top2_margin
from depthmux.errors import DepthmuxError
from depthmux.recursion import RecursiveCache
from depthmux.utils.checks import check_float, check_int

DEFAULT_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


@dataclass
class ExitFeatures:
    """Flat per-position data of the shallow exit: ``states`` [N, d] (final-normed h_s), ``agree`` [N] bool
    (shallow argmax == deep argmax), ``margin`` [N] (p_top1 - p_top2 of the shallow exit, SPEC 2)."""

    states: torch.Tensor
    agree: torch.Tensor
    margin: torch.Tensor

    def __len__(self) -> int:
        return int(self.agree.numel())


@torch.no_grad()
def collect_layer_features(
    model: EarlyExitForCausalLM,
    blocks,
    layers: Sequence[int],
    batch_size: int = 4,
    on_batch: Callable[[int], object] | None = None,
) -> tuple[dict[int, ExitFeatures], dict[int, float], float]:
    """An exit after each of ``layers`` (the model's final norm and LM head on the state after that many
    layers; 1 <= layer <= L - 1), from one forward of the frozen model per batch of packed blocks
    (``input_ids``, ``position_ids``, ``labels`` [N, T]), kept at the positions with a next-token target (as
    the FREE loss). Returns (per layer :class:`ExitFeatures`, per layer shallow NLL, deep NLL); labels
    compare with the deep exit (all L layers). ``on_batch(blocks_done)`` after each batch."""
    model = require_early_exit(model)
    check_int("batch size", batch_size, 1)
    L = model.config.num_hidden_layers
    for layer in layers:
        check_exit_layer(layer, L)
    dev = model.lm_head.weight.device
    parts: dict[int, list[tuple]] = {p: [] for p in layers}
    nll = dict.fromkeys(layers, 0.0)
    deep_nll, count = 0.0, 0
    for start in range(0, len(blocks), batch_size):
        b = blocks.batch(slice(start, start + batch_size))
        ids, pos = b["input_ids"].to(dev), b["position_ids"].to(dev)
        target = torch.full_like(b["labels"], IGNORE_INDEX)
        target[:, :-1] = b["labels"][:, 1:]
        target = target.to(dev)
        keep = target != IGNORE_INDEX  # [B, T]
        ctx = model.model.make_context(ids, None, pos, RecursiveCache())
        h, done, states = model.model.embed(ids), 0, {}
        for p in sorted({*layers, L}):
            h = model.run_layers(h, ctx, done, p)
            done, states[p] = p, h
        deep_logits = model.exit_logits(states[L])
        deep = deep_logits.argmax(-1)
        deep_nll += float(F.cross_entropy(deep_logits[keep].float(), target[keep], reduction="sum"))
        count += int(keep.sum())
        for p in layers:
            hs = model.model.norm(states[p])  # [B, T, d]
            logits = model.logits(hs)
            nll[p] += float(F.cross_entropy(logits[keep].float(), target[keep], reduction="sum"))
            agree = logits.argmax(-1) == deep
            parts[p].append((hs[keep].float().cpu(), agree[keep].cpu(), top2_margin(logits)[keep].cpu()))
        if on_batch is not None:
            on_batch(min(start + batch_size, len(blocks)))
    if count == 0:
        raise DepthmuxError("no positions with a next-token target in the given blocks")
    features = {p: ExitFeatures(*(torch.cat(x) for x in zip(*parts[p], strict=True))) for p in layers}
    return features, {p: nll[p] / count for p in layers}, deep_nll / count


def collect_exit_features(
    model: EarlyExitForCausalLM, blocks, batch_size: int = 4, on_batch: Callable[[int], object] | None = None
) -> ExitFeatures:
    """:func:`collect_layer_features` at the model's own exit layer L_s: the head's training data."""
    model = require_early_exit(model)
    return collect_layer_features(model, blocks, [model.exit_layer], batch_size, on_batch)[0][model.exit_layer]


def fit_exit_head(
    head: ExitConfidenceHead,
    features: ExitFeatures,
    steps: int = 300,
    lr: float = 1e-2,
    token_batch: int = 4096,
    seed: int = 0,
    on_step: Callable[[int, float], object] | None = None,
) -> list[float]:
    """Fit ``head`` by binary cross-entropy on (``features.states``, ``features.agree``): Adam on the
    standardised states, starting from w = 0 and b = logit(share of agreeing positions), minibatches of
    ``token_batch`` positions drawn with a ``seed``-ed generator; the standardisation is folded into the
    weights at the end, so ``head(hs)`` needs no statistics. Returns the minibatch losses, one per step."""
    check_int("--steps", steps, 1)
    check_float("--lr", lr, 0.0, low_open=True)
    check_int("token batch", token_batch, 1)
    x = features.states.float()
    y = features.agree.float()
    if x.ndim != 2 or x.shape[0] != y.numel() or x.shape[1] != head.linear.in_features:
        raise DepthmuxError(f"exit features {tuple(x.shape)} do not fit a head of width {head.linear.in_features}")
    mean, std = x.mean(0), x.std(0, unbiased=False).clamp(min=1e-6)
    z = (x - mean) / std
    prior = float(y.mean().clamp(1e-4, 1 - 1e-4))
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.tensor(torch.logit(torch.tensor(prior)).item(), requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=lr)
    g = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    n = x.shape[0]
    for step in range(steps):
        idx = torch.randint(0, n, (min(token_batch, n),), generator=g)
        loss = F.binary_cross_entropy_with_logits(z[idx] @ w + b, y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step + 1, losses[-1])
    with torch.no_grad():  # w . (x - mean) / std + b  ==  (w / std) . x + (b - w . mean / std)
        scaled = w / std
        head.linear.weight.copy_(scaled[None].to(head.linear.weight))
        head.linear.bias.fill_(float(b - (scaled * mean).sum()))
    return losses


def train_exit_head(
    model: EarlyExitForCausalLM,
    blocks,
    steps: int = 300,
    lr: float = 1e-2,
    batch_size: int = 4,
    token_batch: int = 4096,
    seed: int = 0,
    on_batch: Callable[[int], object] | None = None,
    on_step: Callable[[int, float], object] | None = None,
) -> dict:
    """Give ``model`` a confidence head (:meth:`EarlyExitForCausalLM.attach_exit_head`) and train it on
    ``blocks`` (module docstring); the rest of the model is frozen (only the head's weights change). Returns
    ``{"losses", "train_positions", "train_agreement"}`` (``train_agreement``: share of positions whose
    label is 1)."""
    model = require_early_exit(model)
    features = collect_exit_features(model, blocks, batch_size, on_batch)
    head = model.attach_exit_head()
    losses = fit_exit_head(head, features, steps, lr, token_batch, seed, on_step)
    return {"losses": losses, "train_positions": len(features), "train_agreement": float(features.agree.float().mean())}


@torch.no_grad()
def exit_head_report(
    head: ExitConfidenceHead, features: ExitFeatures, thresholds: Sequence[float] = DEFAULT_THRESHOLDS
) -> dict:
    """How well ``head`` predicts agreement on (held-out) ``features``: ``auc_head``, ``auc_margin`` (FREE's
    margin on the same positions), ``accuracy`` (head > 0.5 against the label), ``bce``, ``agreement``
    (share of label 1), ``positions``, and ``head`` / ``margin``: :func:`exit_table` at ``thresholds``."""
    conf = head(features.states.to(head.linear.weight.device)).cpu()
    y = features.agree
    return {
        "positions": len(features),
        "agreement": float(y.float().mean()),
        "auc_head": roc_auc(conf, y),
        "auc_margin": roc_auc(features.margin, y),
        "accuracy": float(((conf > 0.5) == y).float().mean()),
        "bce": float(F.binary_cross_entropy(conf.clamp(1e-7, 1 - 1e-7), y.float())),
        "head": exit_table(conf, y, thresholds),
        "margin": exit_table(features.margin, y, thresholds),
    }
