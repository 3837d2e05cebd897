"""Early exiting with a shallow-deep decoder (FREE, SPEC 2), level 3: built on :mod:`depthmux.recursion`'s
LLaMA decoder, below :mod:`depthmux.lm` (whose loader registers it).

* :class:`EarlyExitConfig`, :class:`EarlyExitForCausalLM` (registered with transformers' Auto classes as
  model type ``"depthmux_early_exit"``), :class:`EarlyExitCausalLMOutput`, :func:`from_llama`,
  :func:`load_early_exit_model`, :func:`require_early_exit`, :func:`top2_margin`; :class:`ShallowExit`
  (the shallow model as a causal LM of its own, for held-out evaluation);
* :mod:`depthmux.early_exit.threshold`: :class:`AdaptiveThreshold` (Beta mixture over (confidence,
  agreement) pairs, EMA-refreshed, threshold bounding the wrong-exit probability by delta),
  :func:`check_threshold`, :func:`check_delta`, :func:`beta_cdf`;
* :mod:`depthmux.early_exit.head`: :class:`ExitConfidenceHead` (CALM's early-exit classifier: a learned
  confidence on the shallow state, ``config.exit_confidence = "head"``), :func:`roc_auc`, :func:`exit_table`;
* :mod:`depthmux.early_exit.head_training`: :func:`train_exit_head` (consistency labels from one frozen
  forward, BCE), :func:`fit_exit_head`, :func:`collect_exit_features`, :func:`collect_layer_features`,
  :func:`exit_head_report`.
"""

from transformers import AutoConfig, AutoModelForCausalLM

from depthmux.early_exit.config import EarlyExitConfig, check_exit_layer
from depthmux.early_exit.head import EXIT_CONFIDENCES, ExitConfidenceHead, exit_table, roc_auc
from depthmux.early_exit.head_training import (
    DEFAULT_THRESHOLDS,
    L2_GRID,
    ExitFeatures,
    collect_exit_features,
    collect_layer_features,
    exit_head_report,
    fit_exit_head,
    train_exit_head,
)
from depthmux.early_exit.modeling import (
    EarlyExitCausalLMOutput,
    EarlyExitForCausalLM,
    ShallowExit,
    from_llama,
    load_early_exit_model,
    require_early_exit,
    top2_margin,
)
from depthmux.early_exit.threshold import AdaptiveThreshold, beta_cdf, check_delta, check_threshold

AutoConfig.register(EarlyExitConfig.model_type, EarlyExitConfig, exist_ok=True)
AutoModelForCausalLM.register(EarlyExitConfig, EarlyExitForCausalLM, exist_ok=True)

__all__ = [
    "DEFAULT_THRESHOLDS",
    "EXIT_CONFIDENCES",
    "L2_GRID",
    "AdaptiveThreshold",
    "EarlyExitCausalLMOutput",
    "EarlyExitConfig",
    "EarlyExitForCausalLM",
    "ExitConfidenceHead",
    "ExitFeatures",
    "ShallowExit",
    "beta_cdf",
    "check_delta",
    "check_exit_layer",
    "check_threshold",
    "collect_exit_features",
    "collect_layer_features",
    "exit_head_report",
    "exit_table",
    "fit_exit_head",
    "from_llama",
    "load_early_exit_model",
    "require_early_exit",
    "roc_auc",
    "top2_margin",
    "train_exit_head",
]
