"""CALM's early-exit classifier for the FREE shallow exit (issue 19 point 3; replaces SPEC 2's exit rule
when a model has one): a learned confidence on the shallow exit's final-normed state, so that deciding
whether a token exits costs ``d + 1`` multiply-adds instead of the ``V x d`` LM head.

* :class:`ExitConfidenceHead`: ``hs [..., d] -> sigmoid(w . hs + b) [...]`` in [0, 1]; d + 1 parameters.
  An :class:`~depthmux.early_exit.EarlyExitForCausalLM` whose config says ``exit_confidence="head"``
  holds one (``model.exit_head``), saved and loaded with its weights.
* :func:`roc_auc`: the area under the ROC curve of a score against binary labels (ties count half).
* :func:`exit_table`: at each threshold, the share of tokens that would exit and how often the
  exited ones agree with the deep model.

Training (labels = shallow argmax == deep argmax, as CALM's consistency labels) is in
:mod:`depthmux.early_exit.head_training`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from depthmux.utils.flops import add_flops, counting, linear_flops

EXIT_CONFIDENCES = ("margin", "head")


class ExitConfidenceHead(nn.Module):
    """A linear map d -> 1 and a sigmoid on the final-normed shallow state ``hs = norm(h_s)``.

    Starts at w = 0, b = 0 (confidence 0.5 everywhere); :func:`~depthmux.early_exit.fit_exit_head`
    trains it. ``forward(hs [..., d]) -> [...]`` in [0, 1]; ``logit(hs)`` gives the pre-sigmoid score.
    """

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        with torch.no_grad():
            self.linear.weight.zero_()
            self.linear.bias.zero_()

    def logit(self, hs: torch.Tensor) -> torch.Tensor:
        """[..., d] -> [...] (declares its FLOPs)."""
        if counting():
            add_flops(linear_flops(hs.numel() // hs.shape[-1], hs.shape[-1], 1))
        return self.linear(hs.to(self.linear.weight.dtype))[..., 0]

    def forward(self, hs: torch.Tensor) -> torch.Tensor:
        """[..., d] -> confidence [...] in [0, 1] (float32)."""
        return torch.sigmoid(self.logit(hs).float())


def roc_auc(scores: torch.Tensor, labels: torch.Tensor) -> float | None:
    """P(score of a positive > score of a negative) + P(equal) / 2 (Mann-Whitney). [N], [N] -> a number,
    or None when the labels are all one class."""
    s = scores.detach().double().flatten().cpu()
    y = labels.detach().bool().flatten().cpu()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    _, inverse, counts = torch.unique(s, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    ranks = ((ends - counts + 1 + ends) / 2)[inverse]  # average rank of tied scores
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def exit_table(confidence: torch.Tensor, agree: torch.Tensor, thresholds) -> list[dict]:
    """Per threshold t (a token exits when its confidence is ABOVE t, as in the engine): ``exit_rate``,
    ``exit_agreement`` (share of exited tokens whose shallow argmax equals the deep one; None when none
    exit) and ``token_agreement`` (share of all tokens equal to the deep argmax when exited tokens take
    the shallow one, the others the deep one). [N], [N] bool -> one dict per threshold."""
    conf = confidence.detach().float().flatten().cpu()
    ok = agree.detach().bool().flatten().cpu()
    n = max(int(conf.numel()), 1)
    rows = []
    for t in thresholds:
        exits = conf > float(t)
        k = int(exits.sum())
        rows.append(
            {
                "threshold": float(t),
                "exit_rate": k / n,
                "exit_agreement": float(ok[exits].float().mean()) if k else None,
                "token_agreement": float((ok | ~exits).float().mean()) if conf.numel() else math.nan,
            }
        )
    return rows
