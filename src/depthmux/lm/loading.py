"""Loading causal LMs and their tokenizers: the one place that turns a path into a model.

* :func:`resolve_model_dir`: a run folder (``<run>/model`` or its newest checkpoint's ``model/``),
  a checkpoint folder, or a model folder (holding ``config.json``) -> the model folder;
* :func:`pretrained_model_dir`: ``"smollm2"`` (the packaged SmolLM2-135M) or a path -> model folder;
* :func:`load_lm`: a model folder -> a :class:`~depthmux.lm.protocol.CausalLM`: a recursive / MoR
  model through :func:`depthmux.recursion.load_recursive_model`, an early-exit model through
  :func:`depthmux.early_exit.load_early_exit_model`, a LLaMA-family transformers model
  wrapped in :class:`~depthmux.lm.hf_adapter.HFCausalLMAdapter`;
* :func:`load_saved_tokenizer`: the tokenizer saved next to a model, or None.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from depthmux.early_exit import EarlyExitConfig, load_early_exit_model
from depthmux.errors import DepthmuxError
from depthmux.lm.hf_adapter import LLAMA_FAMILY, HFCausalLMAdapter
from depthmux.lm.protocol import CausalLM
from depthmux.recursion import RecursiveConfig, load_recursive_model
from depthmux.utils.checkpoint import existing_directory
from depthmux.utils.checks import check_model_folder
from depthmux.utils.run_folder import RunFolder


def resolve_model_dir(path: str | os.PathLike) -> Path:
    """The model folder for ``path``: itself if it holds ``config.json``, else ``<path>/model``, else
    the ``model/`` of ``path`` as a checkpoint or of the run's newest checkpoint."""
    p = Path(path)
    if not p.exists():
        raise DepthmuxError(f"model not found: {p}")
    for cand in (p, existing_directory(p / "model")):
        if (cand / "config.json").is_file():
            return cand
    checkpoints = RunFolder(p).checkpoints()
    if checkpoints:
        return existing_directory(checkpoints[-1][1] / "model")
    raise DepthmuxError(f"no model in {p}: expected config.json, model/ or checkpoints/")


def pretrained_model_dir(name: str) -> Path:
    """``"smollm2"`` -> the packaged SmolLM2-135M folder; anything else -> :func:`resolve_model_dir`."""
    if name == "smollm2":
        from depthmux.assets import smollm2_path

        return smollm2_path()
    return resolve_model_dir(name)


def load_lm(path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> CausalLM:
    """Load the causal LM at ``path`` (see :func:`resolve_model_dir`), in eval mode."""
    d = resolve_model_dir(path)
    model_type = check_model_folder(d, weights=False).get("model_type")  # each loader below checks the whole folder
    if model_type == RecursiveConfig.model_type:
        return load_recursive_model(d, dtype=dtype).eval()
    if model_type == EarlyExitConfig.model_type:
        return load_early_exit_model(d, dtype=dtype).eval()
    if model_type not in LLAMA_FAMILY:
        raise DepthmuxError(
            f"{d} holds a {model_type!r} model: expected {RecursiveConfig.model_type!r}, "
            f"{EarlyExitConfig.model_type!r} or a LLaMA-family causal LM ({', '.join(LLAMA_FAMILY)})"
        )
    from transformers import AutoModelForCausalLM

    from depthmux.backbones.loading import load_hf_model  # the one raw Hugging Face loader (level 1)

    return HFCausalLMAdapter(load_hf_model(d, AutoModelForCausalLM, dtype, what="a causal LM")).eval()


def load_saved_tokenizer(model_dir: str | os.PathLike):
    """The tokenizer saved in ``model_dir``, or None when it holds no vocabulary file
    (:data:`depthmux.backbones.loading.TOKENIZER_VOCAB_FILES`)."""
    from depthmux.backbones.loading import has_tokenizer, load_hf_tokenizer

    return load_hf_tokenizer(model_dir) if has_tokenizer(model_dir) else None
