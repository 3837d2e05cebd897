"""Training and judging the learned exit confidence (CALM's early-exit classifier, issue 19 point 3).

Labels are CALM's consistency labels: 1 where the shallow exit's argmax equals the deep exit's argmax at
that position, from ONE forward of the frozen early-exit model per batch of blocks
(:func:`collect_layer_features`). The head is then fitted on the stored states alone (:func:`fit_exit_head`:
binary cross-entropy, Adam; nothing else of the model changes), so training costs one forward per block
plus ``steps x batch x d`` multiply-adds.

* :func:`collect_layer_features` / :func:`collect_exit_features`: ``hs = norm(h_s)``, agreement labels and
  FREE's margin at every position that has a next-token target, at any exit layers (the sweep) or the
  model's own;
* :func:`fit_exit_head`: BCE on standardised states with an L2 penalty chosen on a validation slice, folded
  back into the head's weights afterwards;
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


L2_GRID = (0.0, 1e-4, 1e-3, 1e-2, 1e-1)
VALIDATION_SHARE = 0.1


def _fit_logistic(
    z: torch.Tensor,
    y: torch.Tensor,
    l2: float,
    steps: int,
    lr: float,
    token_batch: int,
    seed: int,
    on_step: Callable[[float], object] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """Adam on ``BCE(z @ w + b, y) + l2 * |w|^2`` from w = 0, b = logit(mean y); minibatches of ``token_batch``
    rows drawn with a ``seed``-ed generator. z [N, d], y [N] -> (w [d], b [], minibatch BCE per step)."""
    prior = float(y.mean().clamp(1e-4, 1 - 1e-4))
    w = torch.zeros(z.shape[1], requires_grad=True)
    b = torch.tensor(float(torch.logit(torch.tensor(prior))), requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=lr)
    g = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    for _ in range(steps):
        idx = torch.randint(0, z.shape[0], (min(token_batch, z.shape[0]),), generator=g)
        bce = F.binary_cross_entropy_with_logits(z[idx] @ w + b, y[idx])
        opt.zero_grad()
        (bce + l2 * w.pow(2).sum()).backward()
        opt.step()
        losses.append(float(bce.detach()))
        if on_step is not None:
            on_step(losses[-1])
    return w.detach(), b.detach(), losses


def fit_exit_head(
    head: ExitConfidenceHead,
    features: ExitFeatures,
    steps: int = 300,
    lr: float = 1e-2,
    token_batch: int = 4096,
    seed: int = 0,
    on_step: Callable[[int, float], object] | None = None,
    l2: float | None = None,
) -> dict:
    """Fit ``head`` by binary cross-entropy on (``features.states``, ``features.agree``): logistic regression
    on the standardised states (:func:`_fit_logistic`), the standardisation folded into the head's weights at
    the end so ``head(hs)`` needs no statistics. ``l2``: the penalty on the standardised weights; None chooses
    it from :data:`L2_GRID` by the BCE on the last :data:`VALIDATION_SHARE` of the positions (whole blocks,
    as they come) after fitting on the rest, then refits on all positions (a head of d + 1 weights on a few
    thousand positions with few agreements overfits without it). ``on_step(steps_done, loss)`` counts every
    step of every fit (``steps * (len(L2_GRID) + 1)`` with ``l2=None``).

    Returns ``{"losses": minibatch BCE per step of the final fit, "l2": the penalty used,
    "validation_bce": {penalty: BCE} (empty when ``l2`` was given)}``."""
    check_int("--steps", steps, 1)
    check_float("--lr", lr, 0.0, low_open=True)
    check_int("token batch", token_batch, 1)
    check_float("l2", l2, 0.0, allow_none=True)
    x = features.states.float()
    y = features.agree.float()
    if x.ndim != 2 or x.shape[0] != y.numel() or x.shape[1] != head.linear.in_features:
        raise DepthmuxError(f"exit features {tuple(x.shape)} do not fit a head of width {head.linear.in_features}")
    mean, std = x.mean(0), x.std(0, unbiased=False).clamp(min=1e-6)
    z = (x - mean) / std
    done = [0]

    def tick(loss: float) -> None:
        done[0] += 1
        if on_step is not None:
            on_step(done[0], loss)

    validation: dict[float, float] = {}
    n_val = round(VALIDATION_SHARE * x.shape[0])
    if l2 is None and 0 < n_val < x.shape[0]:
        z_fit, y_fit, z_val, y_val = z[:-n_val], y[:-n_val], z[-n_val:], y[-n_val:]
        for penalty in L2_GRID:
            w, b, _ = _fit_logistic(z_fit, y_fit, penalty, steps, lr, token_batch, seed, tick)
            validation[penalty] = float(F.binary_cross_entropy_with_logits(z_val @ w + b, y_val))
        l2 = min(validation, key=lambda k: (validation[k], -k))  # ties: the larger penalty
    l2 = 0.0 if l2 is None else float(l2)
    w, b, losses = _fit_logistic(z, y, l2, steps, lr, token_batch, seed, tick)
    with torch.no_grad():  # w . (x - mean) / std + b  ==  (w / std) . x + (b - w . mean / std)
        scaled = w / std
        head.linear.weight.copy_(scaled[None].to(head.linear.weight))
        head.linear.bias.fill_(float(b - (scaled * mean).sum()))
    return {"losses": losses, "l2": l2, "validation_bce": validation}


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
    l2: float | None = None,
) -> dict:
    """Give ``model`` a confidence head (:meth:`EarlyExitForCausalLM.attach_exit_head`) and train it on
    ``blocks`` (module docstring); the rest of the model is frozen (only the head's weights change). Returns
    :func:`fit_exit_head`'s dict plus ``train_positions`` and ``train_agreement`` (share of positions whose
    label is 1)."""
    model = require_early_exit(model)
    features = collect_exit_features(model, blocks, batch_size, on_batch)
    head = model.attach_exit_head()
    fit = fit_exit_head(head, features, steps, lr, token_batch, seed, on_step, l2)
    return {**fit, "train_positions": len(features), "train_agreement": float(features.agree.float().mean())}


@torch.no_grad()
def exit_head_report(
    head: ExitConfidenceHead, features: ExitFeatures, thresholds: Sequence[float] = DEFAULT_THRESHOLDS
) -> dict:
    """How well ``head`` predicts agreement on (held-out) ``features``: ``auc_head``, ``auc_margin`` (FREE's
    margin on the same positions), ``accuracy`` (head > 0.5 against the label; ``majority_accuracy``: always
    guessing the commoner label), ``bce``, ``agreement``
    (share of label 1), ``positions``, and ``head`` / ``margin``: :func:`exit_table` at ``thresholds``."""
    conf = head(features.states.to(head.linear.weight.device)).cpu()
    y = features.agree
    return {
        "positions": len(features),
        "agreement": float(y.float().mean()),
        "auc_head": roc_auc(conf, y),
        "auc_margin": roc_auc(features.margin, y),
        "accuracy": float(((conf > 0.5) == y).float().mean()),
        "majority_accuracy": max(float(y.float().mean()), 1 - float(y.float().mean())),
        "bce": float(F.binary_cross_entropy(conf.clamp(1e-7, 1 - 1e-7), y.float())),
        "head": exit_table(conf, y, thresholds),
        "margin": exit_table(features.margin, y, thresholds),
    }
