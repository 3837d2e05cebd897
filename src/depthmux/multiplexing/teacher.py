"""Training the teacher's head: a linear probe fitted once on the frozen backbone's read-outs
(N = 1, SPEC 1.2), L2 chosen on the validation split. The probe then stays frozen while the
RevMUX adapters train against it."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from depthmux.multiplexing.heads import LinearProbeHead

L2_GRID = (1e-4, 1e-3, 1e-2)


def _fit_logistic(x: torch.Tensor, y: torch.Tensor, num_labels: int, l2: float, seed: int) -> LinearProbeHead:
    """Multinomial logistic regression by L-BFGS from a zero start: x [M, d], y [M]."""
    torch.manual_seed(seed)
    head = LinearProbeHead(x.shape[1], num_labels).to(x.device)
    y = y.to(x.device)
    opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(head(x), y) + l2 * head.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return head


def train_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    num_labels: int,
    seed: int = 0,
) -> tuple[LinearProbeHead, dict]:
    """L2-regularised logistic regression on frozen read-outs; L2 chosen on the validation split.

    Args:
        train_x, val_x: teacher read-outs h_k, [M, d] (the probe is fitted on their device).
        train_y, val_y: labels [M].
    Returns:
        the frozen :class:`LinearProbeHead` (d -> num_labels) and {"l2", "val_accuracy"}.
    """
    best = None
    for l2 in L2_GRID:
        head = _fit_logistic(train_x, train_y, num_labels, l2, seed)
        with torch.no_grad():
            acc = (head(val_x).argmax(-1) == val_y.to(val_x.device)).float().mean().item()
        if best is None or acc > best[2]:
            best = (head, l2, acc)
    head, l2, acc = best
    return head.freeze(), {"l2": l2, "val_accuracy": acc}
