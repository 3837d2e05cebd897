"""``depthmux lm calibrate-router``: fit the causal rule's thresholds of an expert-choice MoR model on
held-out text and save the calibrated model (issue 19 point 2, SPEC 4).

The held-out blocks of the model's run (or of ``--corpus``) are cut in two disjoint parts: the first
``cal_blocks`` choose the thresholds (:func:`depthmux.recursion.calibrate_causal_thresholds`), the
next ``eval_blocks`` report the depth distribution and the held-out NLL (causal routing) before and
after, so the reported shares are measured on tokens the calibration did not see.

``on="generated"`` fits on the model's own greedy continuations instead (what decoding routes): the
first ``prompt_tokens`` of each calibration block are continued by ``block_size - prompt_tokens``
tokens under the current rule, the thresholds are fitted on the generated tokens, and this repeats
``rounds`` times (the continuations change with the thresholds). Either way the report gives the depth
on both populations, before and after: the report blocks as text (``before`` / ``after``) and the
model's continuations of the report blocks' prompts (``before_generated`` / ``after_generated``, the
decode-time depth the engine measures: tested equal to its decode-only counts).
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
from depthmux.recursion import (
    RecursiveForCausalLM,
    calibrate_causal_thresholds,
    depth_distribution,
    generated_blocks,
)
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
    on: str = "corpus"  # corpus | generated: the text the thresholds are fitted on
    prompt_tokens: int | None = None  # generated: prompt length (default: half the block)
    rounds: int = 2  # generated: generate-and-fit rounds

    def validate(self) -> CalibrateRouterSpec:
        if self.on not in ("corpus", "generated"):
            raise DepthmuxError(f"--on must be corpus or generated, got {self.on!r}")
        check_int("--rounds", self.rounds, 1)
        if self.prompt_tokens is not None:
            check_int("--prompt-tokens", self.prompt_tokens, 1)
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
    ``progress``: a bar (stderr) over the passes (depth on text and on generated tokens and NLL, before
    and after; the calibration rounds); its ETA is rough, a calibration costing several passes."""
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
    T = held.block_size
    P = spec.prompt_tokens if spec.prompt_tokens is not None else T // 2
    if not 1 <= P <= T - 2:
        raise DepthmuxError(f"--prompt-tokens {P} must leave at least 2 generated tokens in blocks of {T}")
    generating = spec.on == "generated"
    bar = progress_bar(6 + (spec.rounds if generating else 1), "calibrate-router", "pass", progress)
    log = log_above(bar, log)

    def measure(name: str) -> dict[str, Any]:
        text = depth_distribution(model, rep, spec.batch_size)
        bar.update()
        text["nll"] = evaluate_lm(model, rep, spec.batch_size, routing="causal")["nll"]
        bar.update()
        gen_blocks, counted = generated_blocks(model, rep.input_ids[:, :P], T - P, spec.batch_size)
        gen = depth_distribution(model, gen_blocks, spec.batch_size, counted=counted)
        bar.update()
        log(
            f"{name}: share per recursion on text "
            + ", ".join(f"{s:.3f}" for s in text["share_per_recursion"])
            + f" (capacities {', '.join(f'{c:.3f}' for c in text['capacities'])}); average depth on text "
            f"{text['average_depth']:.3f}, on generated tokens {gen['average_depth']:.3f} "
            f"(target {text['target_average_depth']:.3f}); NLL {text['nll']:.4f}"
        )
        return {"text": text, "generated": gen}

    before = measure("before")
    rounds = []
    for _ in range(spec.rounds if generating else 1):
        blocks, counted = (
            generated_blocks(model, cal.input_ids[:, :P], T - P, spec.batch_size) if generating else (cal, None)
        )
        fit = calibrate_causal_thresholds(model, blocks, spec.batch_size, counted=counted)
        rounds.append({"thresholds": fit["thresholds"], "fitted_on": fit["after"], "before_fit": fit["before"]})
        bar.update()
    after = measure("after")
    bar.close()
    log("thresholds " + ", ".join(f"{t:.3f}" for t in fit["thresholds"]) + f" (fitted on {spec.on} text)")
    results = {
        "model": str(model_dir),
        "corpus": data.corpus,
        "block_size": T,
        "cal_blocks": spec.cal_blocks,
        "eval_blocks": spec.eval_blocks,
        "on": spec.on,
        "prompt_tokens": P,
        "thresholds": fit["thresholds"],
        "calibration_set_after": fit["after"],
        "rounds": rounds,
        "before": before["text"],
        "after": after["text"],
        "before_generated": before["generated"],
        "after_generated": after["generated"],
    }
    tokenizer = load_saved_tokenizer(model_dir)
    with atomic_directory(Path(spec.out)) as tmp:
        model.save_pretrained(str(tmp))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        (tmp / "calibration.json").write_text(json.dumps(results, indent=2))
    return results
