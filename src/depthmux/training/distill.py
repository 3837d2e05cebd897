"""Knowledge distillation from the original model for uptraining (issue 19 point 1).

A converted / truncated / early-exit model starts from a pretrained teacher (SmolLM2-135M) and loses
quality; distillation trains it to match the teacher's next-token distribution, a denser signal than
the one-hot next token. In :func:`depthmux.training.lm.train_lm` (``LMTrainConfig.teacher``,
``kd_weight``, ``kd_temperature``) the optimised loss becomes::

    loss = model loss (LM CE + weighted aux losses, or the FREE loss)  +  kd_weight * KD
    KD   = tau^2 * mean over target positions of KL( softmax(z_teacher / tau) || softmax(z_student / tau) )

over the positions that have a next-token target (``labels[:, 1:] != -100``, the LM loss's
positions), the teacher in eval mode without gradients. ``tau^2`` keeps the gradient scale of the
soft targets independent of the temperature (Hinton et al.). KD of identical logits is exactly 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from depthmux.data.text import IGNORE_INDEX
from depthmux.errors import DepthmuxError


def kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """``tau^2 * mean KL(teacher || student)`` over target positions (module docstring).

    Args:
        student_logits, teacher_logits: ``[B, T, V]`` (logit t predicts token t + 1).
        labels: ``[B, T]`` with ``-100`` where no target; position t counts iff ``labels[:, t + 1] != -100``.
        temperature: tau > 0.
    Returns: a scalar (0 without target positions).
    """
    if student_logits.shape != teacher_logits.shape:
        raise DepthmuxError(
            f"the teacher's logits {tuple(teacher_logits.shape)} do not match the student's "
            f"{tuple(student_logits.shape)}: distillation needs the same tokenizer and vocabulary"
        )
    mask = labels[:, 1:] != IGNORE_INDEX  # [B, T-1]
    if not bool(mask.any()):
        return student_logits.sum() * 0.0
    s = student_logits[:, :-1][mask].float() / temperature  # [N, V]
    t = teacher_logits[:, :-1][mask].float() / temperature
    kl = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="batchmean")
    return kl * temperature**2
