"""``depthmux lm truncate``: SmolLM2 (or a LLaMA folder) with layers dropped, optionally to the inference
FLOPs of another model (issue 19 point 4, the baseline every depth method must beat).

Saves a transformers model folder (+ the source's tokenizer, + ``truncation.json``: kept layers and
the declared forward FLOPs per token of the source, the truncated model and the target) that
``load_lm``, ``lm eval``, ``lm eval --tasks``, the engine and ``lm train --from-pretrained`` (uptraining,
with ``--teacher smollm2 --kd-weight ...`` for the same distillation budget) all take.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from depthmux.errors import DepthmuxError
from depthmux.lm import HFCausalLMAdapter, load_lm, load_saved_tokenizer, pretrained_model_dir
from depthmux.lm.truncation import forward_flops_per_token, kept_layers, layers_for_flops, truncate_llama
from depthmux.recipes.lm import LMDataSpec, prepare_lm_data
from depthmux.utils.checkpoint import atomic_directory
from depthmux.utils.checks import check_writable_parent


def run_lm_truncate(
    out: str | os.PathLike,
    source: str = "smollm2",
    layers: int | None = None,
    keep: str = "ends",
    match_flops: str | None = None,
    corpus: str = "shakespeare",
    block_size: int = 128,
    blocks: int = 4,
) -> dict[str, Any]:
    """Truncate ``source`` to ``layers`` layers, or to the FLOPs of the model at ``match_flops`` (measured
    on ``blocks`` held-out blocks of ``corpus``); save in ``out`` (a new or empty folder). Returns the
    ``truncation.json`` record."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DepthmuxError(f"--out {out} exists and is not an empty folder: choose a new folder")
    check_writable_parent("--out", out)  # the model is written next to it first, then renamed
    if (layers is None) == (match_flops is None):
        raise DepthmuxError("give exactly one of --layers and --match-flops")
    src_dir = pretrained_model_dir(source)
    base = load_lm(src_dir)
    if not isinstance(base, HFCausalLMAdapter):
        raise DepthmuxError(f"{source} is not a LLaMA-family transformers model: nothing to truncate")
    n = base.config.num_hidden_layers
    if layers is not None:
        kept_layers(n, layers, keep)  # checks before any work
    tokenizer = load_saved_tokenizer(src_dir)
    _, _, held = prepare_lm_data(
        LMDataSpec(corpus=corpus, tokenizer=str(src_dir), block_size=block_size, max_eval_blocks=blocks),
        tokenizer=tokenizer,
    )
    if held is None:
        raise DepthmuxError(f"no held-out blocks of {corpus} to measure FLOPs on")
    ids, pos = held.input_ids, held.position_ids
    record: dict[str, Any] = {"source": str(src_dir), "source_layers": n, "keep": keep, "corpus": corpus}
    record["source_flops_per_token"] = forward_flops_per_token(base, ids, pos)
    if match_flops is not None:
        target = load_lm(match_flops)
        record["target"] = str(match_flops)
        record["target_flops_per_token"] = forward_flops_per_token(target, ids, pos)
        points = {k: forward_flops_per_token(HFCausalLMAdapter(truncate_llama(base.model, k, keep)), ids, pos)
                  for k in (1, 2)}  # fmt: skip
        layers = min(n, layers_for_flops(record["target_flops_per_token"], points))
    model = truncate_llama(base.model, layers, keep)
    record["layers"] = layers
    record["kept_layers"] = kept_layers(n, layers, keep)
    record["flops_per_token"] = forward_flops_per_token(HFCausalLMAdapter(model), ids, pos)
    with atomic_directory(out) as tmp:
        model.save_pretrained(str(tmp))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        (tmp / "truncation.json").write_text(json.dumps(record, indent=2))
    return record
