"""RevMUX training loss (SPEC 1.3): ``L = L_ce + λ · L_info``."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(recovered: torch.Tensor, teacher: torch.Tensor, tau: float = 0.05) -> torch.Tensor:
    """InfoNCE between demultiplexed read-outs ĥ [B, d] and the teacher's h [B, d].

    Similarity is cosine / τ; the positive of ĥ_k is h_k, the negatives are the other inputs of
    the minibatch (as the reference code does; SPEC 1.3). Averaged over the B inputs.
    """
    sim = F.normalize(recovered, dim=-1) @ F.normalize(teacher, dim=-1).T / tau  # [B, B]
    return F.cross_entropy(sim, torch.arange(sim.shape[0], device=sim.device))


def revmux_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    recovered: torch.Tensor,
    teacher: torch.Tensor,
    lambda_info: float,
    tau: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """``CE(head(ĥ), y) + λ · InfoNCE(ĥ, h)``; returns the loss and its parts for logging."""
    ce = F.cross_entropy(logits, labels)
    info = info_nce(recovered, teacher, tau) if lambda_info > 0 else ce.new_zeros(())
    return ce + lambda_info * info, {"ce": ce.item(), "info": info.item()}
