"""Depth-side models: recursive / relaxed recursive transformers and Mixture-of-Recursions.

SPEC 3 (Relaxed Recursive Transformers) and SPEC 4 (Mixture-of-Recursions). Public API:

* :class:`RecursiveConfig`, :class:`RecursiveForCausalLM` (registered with transformers' Auto
  classes as model type ``"depthmux_recursive"``), :class:`RecursiveCausalLMOutput`;
* the public model stages of :class:`RecursiveModel` (``make_context``, ``embed``, ``prefix``,
  ``route``, ``recursion`` / ``run_block``, ``suffix``) and ``RecursiveForCausalLM.logits``, with
  their :class:`TokenContext`, :class:`LayerContext` and :class:`RouteDecision`;
* :class:`RecursiveCache`, :class:`LayerKV`, :func:`kv_cache_entries`;
* :func:`count_parameters_formula`;
* :func:`convert_llama_to_recursive`, :func:`load_recursive_model`, :func:`recursive_from_llama_state_dict`.
"""

from transformers import AutoConfig, AutoModelForCausalLM

from depthmux.recursion.calibration import calibrate_causal_thresholds, depth_distribution, generated_blocks
from depthmux.recursion.config import (
    MOR_KV_STRATEGIES,
    MOR_ROUTERS,
    MOR_UPDATES,
    SHARING_STRATEGIES,
    RecursiveConfig,
    default_capacities,
)
from depthmux.recursion.conversion import (
    INIT_METHODS,
    convert_llama_to_recursive,
    load_recursive_model,
    recursive_config_from_llama,
    recursive_from_llama_state_dict,
)
from depthmux.recursion.kv_cache import LayerKV, RecursiveCache, kv_cache_entries
from depthmux.recursion.layers import BlockLayer, LayerContext, RelaxedLinear, TokenContext
from depthmux.recursion.modeling import (
    RecursiveCausalLMOutput,
    RecursiveForCausalLM,
    RecursiveModel,
    count_parameters_formula,
)
from depthmux.recursion.routers import RouteDecision, capacity_k, expected_counts

AutoConfig.register(RecursiveConfig.model_type, RecursiveConfig, exist_ok=True)
AutoModelForCausalLM.register(RecursiveConfig, RecursiveForCausalLM, exist_ok=True)

__all__ = [
    "INIT_METHODS",
    "MOR_KV_STRATEGIES",
    "MOR_ROUTERS",
    "MOR_UPDATES",
    "SHARING_STRATEGIES",
    "BlockLayer",
    "LayerContext",
    "LayerKV",
    "RecursiveCache",
    "RecursiveCausalLMOutput",
    "RecursiveConfig",
    "RecursiveForCausalLM",
    "RecursiveModel",
    "RelaxedLinear",
    "RouteDecision",
    "TokenContext",
    "calibrate_causal_thresholds",
    "capacity_k",
    "convert_llama_to_recursive",
    "count_parameters_formula",
    "default_capacities",
    "depth_distribution",
    "expected_counts",
    "generated_blocks",
    "kv_cache_entries",
    "load_recursive_model",
    "recursive_config_from_llama",
    "recursive_from_llama_state_dict",
]
