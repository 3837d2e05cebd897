"""Configuration of the shallow-deep early-exit decoder (FREE, SPEC 2).

An :class:`EarlyExitConfig` is a :class:`~depthmux.recursion.RecursiveConfig` of a plain LLaMA
decoder (``sharing="none"``, one recursion: every layer unique) plus the shallow exit:

* ``exit_layer`` = L_s: the shallow model is the first L_s layers followed by the model's own
  final norm and LM head (shared, no new parameters); 1 <= L_s <= L - 1.
* ``exit_mse_weight`` = alpha of the FREE loss (0.5 in the public scripts, SPEC 2).
* ``exit_confidence``: how the engine decides that a token exits. ``"margin"`` (default; every model
  saved before the field existed): FREE's p_top1 - p_top2 of the shallow exit's softmax (SPEC 2), which
  needs the full LM head on every token. ``"head"``: CALM's early-exit classifier, a learned
  ``sigmoid(w . norm(h_s) + b)`` (:class:`~depthmux.early_exit.ExitConfidenceHead`, the model's
  ``exit_head``, trained by ``depthmux ee train-head``), so a token that does not exit never computes
  the shallow LM head (issue 19 point 3).

Every invalid value is a one-line :class:`~depthmux.errors.DepthmuxError`.
"""

from __future__ import annotations

import math

from depthmux.early_exit.head import EXIT_CONFIDENCES
from depthmux.errors import DepthmuxError
from depthmux.recursion import RecursiveConfig


def check_exit_layer(exit_layer, num_layers: int) -> None:
    """One line unless ``exit_layer`` is an integer in 1..num_layers - 1."""
    ok = isinstance(exit_layer, int) and not isinstance(exit_layer, bool) and 1 <= exit_layer <= num_layers - 1
    if not ok:
        raise DepthmuxError(
            f"exit layer L_s must be an integer in 1..{num_layers - 1} (the model has "
            f"{num_layers} layers), got {exit_layer!r}"
        )


class EarlyExitConfig(RecursiveConfig):
    """Configuration for :class:`~depthmux.early_exit.EarlyExitForCausalLM`.

    Args (beyond :class:`RecursiveConfig`'s LLaMA fields; ``sharing`` is always "none" and
    ``num_recursions`` 1):
        exit_layer: L_s, layers of the shallow model (1 <= L_s <= L - 1).
        exit_mse_weight: alpha >= 0 of ``alpha * MSE(h_shallow, h_deep)`` in the FREE loss (SPEC 2).
        exit_confidence: "margin" (FREE's top-2 margin) or "head" (a learned confidence head; module docstring).
    """

    model_type = "depthmux_early_exit"

    def __init__(self, exit_layer: int = 1, exit_mse_weight: float = 0.5, exit_confidence: str = "margin", **kwargs):
        for key, value in (("sharing", "none"), ("num_recursions", 1), ("relaxation_rank", 0), ("mor_router", None)):
            if kwargs.get(key, value) != value:
                raise DepthmuxError(
                    f"an early-exit model is a plain LLaMA decoder: {key} must be {value!r}, got {kwargs[key]!r}"
                )
            kwargs[key] = value
        self.exit_layer = exit_layer
        self.exit_mse_weight = exit_mse_weight
        self.exit_confidence = exit_confidence
        super().__init__(**kwargs)
        check_exit_layer(self.exit_layer, self.num_hidden_layers)
        w = self.exit_mse_weight
        if not (isinstance(w, int | float) and not isinstance(w, bool) and math.isfinite(w) and w >= 0):
            raise DepthmuxError(f"exit_mse_weight (alpha) must be a finite number >= 0, got {w!r}")
        if self.exit_confidence not in EXIT_CONFIDENCES:
            raise DepthmuxError(
                f"exit_confidence must be one of {', '.join(EXIT_CONFIDENCES)}, got {self.exit_confidence!r}"
            )
