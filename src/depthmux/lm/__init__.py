"""Causal language models as the rest of depthmux sees them (level 3).

* :mod:`depthmux.lm.protocol`: :class:`CausalLM` / :class:`CausalLMOutput`, the declared contract
  (forward with aux losses and router stats, ``parameter_counts()``, FLOPs declared while counting);
* :mod:`depthmux.lm.hf_adapter`: :class:`HFCausalLMAdapter` for transformers LLaMA-family models,
  :func:`as_causal_lm`;
* :mod:`depthmux.lm.loading`: the one loader (:func:`load_lm`, :func:`resolve_model_dir`,
  :func:`pretrained_model_dir`, :func:`load_saved_tokenizer`);
* :mod:`depthmux.lm.evaluation`: held-out NLL / perplexity and router statistics
  (:func:`evaluate_lm`, :func:`token_nll`, :func:`measure_forward_flops`).
"""

from depthmux.lm.evaluation import evaluate_lm, measure_forward_flops, token_nll
from depthmux.lm.hf_adapter import HFCausalLMAdapter, HFCausalLMOutput, as_causal_lm
from depthmux.lm.loading import load_lm, load_saved_tokenizer, pretrained_model_dir, resolve_model_dir
from depthmux.lm.protocol import CausalLM, CausalLMOutput

__all__ = [
    "CausalLM",
    "CausalLMOutput",
    "HFCausalLMAdapter",
    "HFCausalLMOutput",
    "as_causal_lm",
    "evaluate_lm",
    "load_lm",
    "load_saved_tokenizer",
    "measure_forward_flops",
    "pretrained_model_dir",
    "resolve_model_dir",
    "token_nll",
]
