"""``depthmux lm calibrate-router``: fit the causal rule's thresholds of an expert-choice MoR model on
held-out text and save the calibrated model (issue 19 point 2, SPEC 4).

The held-out blocks of the model's run (or of ``--corpus``) are cut in two disjoint parts: the first
``cal_blocks`` choose the thresholds (:func:`depthmux.recursion.calibrate_causal_thresholds`), the
next ``eval_blocks`` report the depth distribution and the held-out NLL (causal routing) before and
after, so the reported shares are measured on tokens the calibration did not see.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from depthmux.data.text import PackedBlocks
from depthmux.errors import DepthmuxError
from depthmux.lm import evaluate_lm, load_lm, load_saved_tokenizer, resolve_model_dir
from depthmux.recipes.lm import eval_data_spec, prepare_lm_data
from depthmux.recursion import RecursiveForCausalLM, calibrate_causal_thresholds, depth_distribution
from depthmux.utils.checkpoint import atomic_directory
from depthmux.utils.checks import check_int, check_writable_parent
from depthmux.utils.progress import log_above, progress_bar


@dataclass
class CalibrateRouterSpec:
    """Which model, where to save it, and how many held-out blocks calibrate / report."""

    model: str
    out: str
    corpus: str | None = None
    block_size: int | None = None
    cal_blocks: int = 32
    eval_blocks: int = 16
    batch_size: int = 4

    def validate(self) -> CalibrateRouterSpec:
        check_int("--cal-blocks", self.cal_blocks, 1)
        check_int("--eval-blocks", self.eval_blocks, 1)
        check_int("--batch-size", self.batch_size, 1)
        out = Path(self.out)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise DepthmuxError(f"--out {out} exists and is not an empty folder: choose a new folder")
        check_writable_parent("--out", out)  # the model is written next to it first, then renamed
        return self


def _rows(blocks: PackedBlocks, start: int, stop: int) -> PackedBlocks:
    b = blocks.batch(slice(start, stop))
    return PackedBlocks(b["input_ids"], b["position_ids"], b["labels"], blocks.num_documents)


def run_calibrate_router(spec: CalibrateRouterSpec, log=print, progress: bool = True) -> dict[str, Any]:
    """Calibrate, measure, save (module docstring). Returns the results (also ``<out>/calibration.json``).
    ``progress``: a bar (stderr) over the five passes over the blocks (depth and NLL before, the
    calibration, depth and NLL after); its ETA is rough, the calibration costing several passes."""
    spec.validate()
    model_dir = resolve_model_dir(spec.model)
    model = load_lm(model_dir)
    if not isinstance(model, RecursiveForCausalLM) or model.config.mor_router != "expert":
        raise DepthmuxError(f"{model_dir} is not an expert-choice MoR model: nothing to calibrate")
    data = eval_data_spec(spec.model, corpus=spec.corpus, block_size=spec.block_size)
    data = replace(data, max_eval_blocks=spec.cal_blocks + spec.eval_blocks).validate()
    _, _, held = prepare_lm_data(data, tokenizer=load_saved_tokenizer(model_dir))
    if held is None or len(held) < spec.cal_blocks + spec.eval_blocks:
        have = 0 if held is None else len(held)
        raise DepthmuxError(
            f"{have} held-out blocks, need --cal-blocks + --eval-blocks = {spec.cal_blocks + spec.eval_blocks}"
        )
    cal = _rows(held, 0, spec.cal_blocks)
    rep = _rows(held, spec.cal_blocks, spec.cal_blocks + spec.eval_blocks)
    bar = progress_bar(5, "calibrate-router", "pass", progress)
    log = log_above(bar, log)
    before = depth_distribution(model, rep, spec.batch_size)
    bar.update()
    nll_before = evaluate_lm(model, rep, spec.batch_size, routing="causal")["nll"]
    bar.update()
    log(
        "before: share per recursion "
        + ", ".join(f"{s:.3f}" for s in before["share_per_recursion"])
        + f" (capacities {', '.join(f'{c:.3f}' for c in before['capacities'])}); average depth "
        f"{before['average_depth']:.3f} (target {before['target_average_depth']:.3f}); NLL {nll_before:.4f}"
    )
    fit = calibrate_causal_thresholds(model, cal, spec.batch_size)
    bar.update()
    after = depth_distribution(model, rep, spec.batch_size)
    bar.update()
    nll_after = evaluate_lm(model, rep, spec.batch_size, routing="causal")["nll"]
    bar.update()
    bar.close()
    log(
        "after:  share per recursion "
        + ", ".join(f"{s:.3f}" for s in after["share_per_recursion"])
        + f"; average depth {after['average_depth']:.3f}; NLL {nll_after:.4f}; thresholds "
        + ", ".join(f"{t:.3f}" for t in fit["thresholds"])
    )
    results = {
        "model": str(model_dir),
        "corpus": data.corpus,
        "block_size": data.block_size,
        "cal_blocks": spec.cal_blocks,
        "eval_blocks": spec.eval_blocks,
        "thresholds": fit["thresholds"],
        "calibration_set_after": fit["after"],
        "before": {**before, "nll": nll_before},
        "after": {**after, "nll": nll_after},
    }
    tokenizer = load_saved_tokenizer(model_dir)
    with atomic_directory(Path(spec.out)) as tmp:
        model.save_pretrained(str(tmp))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        (tmp / "calibration.json").write_text(json.dumps(results, indent=2))
    return results
