"""A SmolLM2-derived Mixture-of-Recursions model for the decode engine to serve (SPEC 4, SPEC 5).

:func:`run_mor_smollm2` converts the packaged SmolLM2-135M (30 layers) into a middle-cycle recursive
model (first and last layer unique, the 28 middle layers tied into a block of ``28 / N_r`` layers,
Stepwise init, SPEC 3) with expert-choice MoR routers (SPEC 4 capacities ``(N_r - r + 1) / N_r``,
recursion-wise KV), uptrains it briefly on a packaged corpus so its routers (and the causal rule
``sigmoid(logit) > 0.5`` through the router BCE) are trained, and saves it as a run folder
(``<out>/model`` is what ``LLM.from_pretrained(out)`` and ``depthmux lm bench-decode`` load).

N_r = 3 does not divide SmolLM2's 28 middle layers, so the default is N_r = 4 (a 7-layer block;
capacities 1, 3/4, 1/2, 1/4). The router BCE coefficient defaults to 0.1 instead of SPEC 4's
0.001: with a few dozen steps the small coefficient leaves the routers at their initialisation
(docs/lm_results.md measured the agreement/NLL trade-off at small scale).

``results.json`` in ``<out>`` holds the held-out NLL of SmolLM2 itself, of the plain recursive
conversion (no router, no training) and of the MoR model before and after uptraining (causal
routing; top-k routing and the causal-vs-top-k agreement next to it), all on the same held-out blocks.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from depthmux.assets import smollm2_path
from depthmux.errors import DepthmuxError
from depthmux.lm import evaluate_lm, load_lm
from depthmux.recipes.lm import LMDataSpec, prepare_lm_data
from depthmux.recursion import convert_llama_to_recursive
from depthmux.training.lm import LMTrainConfig, train_lm
from depthmux.utils.checks import check_float, check_int, check_seed
from depthmux.utils.run_folder import RunFolder, check_out_folder

DEFAULT_MOR_DIR = "runs/smollm2-mor"
"""Where :func:`run_mor_smollm2` saves the model by default (an ignored folder of the checkout)."""


@dataclass
class MoRSmolLM2Spec:
    """How to build and uptrain the SmolLM2 MoR model (every number checked by :meth:`validate`)."""

    out_dir: str = DEFAULT_MOR_DIR
    recursions: int = 4
    corpus: str = "shakespeare"
    steps: int = 24
    batch_size: int = 4
    block_size: int = 128
    lr: float = 5e-4
    bce_coef: float = 0.1
    eval_blocks: int = 16
    seed: int = 0
    kd_weight: float = 0.0
    kd_temperature: float = 1.0
    eval_every: int = 0

    def validate(self) -> MoRSmolLM2Spec:
        check_int("--recursions", self.recursions, 2)
        check_int("--steps", self.steps, 1)
        check_int("--batch-size", self.batch_size, 1)
        check_int("--block-size", self.block_size, 8)
        check_float("--lr", self.lr, 0.0, low_open=True)
        check_float("--bce-coef", self.bce_coef, 0.0)
        check_int("--eval-blocks", self.eval_blocks, 1)
        check_seed("--seed", self.seed)
        check_float("--kd-weight", self.kd_weight, 0.0)
        check_float("--kd-temperature", self.kd_temperature, 0.0, low_open=True)
        check_int("--eval-every", self.eval_every, 0)
        return self


def _nll(model, held, routing: str | None = None, progress: bool = False, desc: str = "eval") -> dict[str, Any]:
    ev = evaluate_lm(model, held, batch_size=4, routing=routing, progress=progress, desc=desc)
    out = {"nll": ev["nll"], "ppl": ev["ppl"]}
    rs = ev.get("router_stats") or {}
    for key in ("share_per_recursion", "causal_agreement"):
        if rs.get(key) is not None:
            out[key] = rs[key]
    return out


def run_mor_smollm2(spec: MoRSmolLM2Spec, log=print, progress: bool = True) -> dict[str, Any]:
    """Convert, uptrain, evaluate and save (module docstring). Returns the results (also in
    ``<out>/results.json``); the model is in ``<out>/model``. ``progress``: a bar with ETA (stderr) for
    each evaluation and for the uptraining (the training loop's own bar)."""
    spec.validate()
    out = Path(spec.out_dir)
    check_out_folder(out)  # the output-folder rule, before the baseline's evaluation
    if RunFolder(out).holds_run():
        raise DepthmuxError(f"{out} already holds a run: remove it or choose another --out")
    base = smollm2_path()
    data = LMDataSpec(
        corpus=spec.corpus,
        tokenizer=str(base),
        block_size=spec.block_size,
        holdout=0.1,
        seed=spec.seed,
        max_eval_blocks=spec.eval_blocks,
    )
    tok, train, held = prepare_lm_data(data)
    log(f"data: {len(train)} train / {len(held)} held-out blocks of {spec.block_size} tokens ({spec.corpus})")
    results: dict[str, Any] = {
        "spec": asdict(spec),
        "held_out_tokens": int(held.batch(slice(0, len(held)))["input_ids"].numel()),
    }
    t0 = time.time()
    results["smollm2"] = _nll(load_lm(base), held, progress=progress, desc="eval SmolLM2")
    log(f"SmolLM2-135M: held-out NLL {results['smollm2']['nll']:.4f} ({time.time() - t0:.0f} s)")
    t0 = time.time()
    plain = convert_llama_to_recursive(base, num_recursions=spec.recursions, sharing="middle_cycle")
    results["recursive"] = _nll(plain, held, progress=progress, desc="eval recursive")
    log(
        f"middle-cycle recursive-{spec.recursions} (no router): NLL {results['recursive']['nll']:.4f} "
        f"({time.time() - t0:.0f} s)"
    )
    del plain
    mor = convert_llama_to_recursive(
        base, num_recursions=spec.recursions, sharing="middle_cycle", mor_router="expert", mor_bce_coef=spec.bce_coef
    )
    results["mor_before"] = _nll(mor, held, "causal", progress, "eval MoR before uptraining")
    t0 = time.time()
    cfg = LMTrainConfig(
        out_dir=str(out),
        steps=spec.steps,
        batch_size=spec.batch_size,
        lr=spec.lr,
        warmup_steps=max(1, spec.steps // 10),
        decay_fraction=0.2,
        weight_decay=0.0,
        checkpoint_every=0,
        eval_batch_size=4,
        seed=spec.seed,
        progress=progress,
        teacher=str(base) if spec.kd_weight > 0 else None,  # distil from SmolLM2 itself (issue 19)
        kd_weight=spec.kd_weight,
        kd_temperature=spec.kd_temperature,
        eval_every=spec.eval_every,
    )
    res = train_lm(
        mor,
        train,
        held if spec.eval_every else None,
        cfg,
        tokenizer=tok,
        extra_state={"data": asdict(data), "mor_smollm2": asdict(spec)},
    )
    results["train"] = {
        "steps": res.step,
        "tokens": res.tokens,
        "train_loss": res.train_loss,
        "train_flops": res.train_flops,
        "seconds": time.time() - t0,
    }
    log(f"uptrained {res.step} steps ({res.tokens} tokens) in {time.time() - t0:.0f} s, loss {res.train_loss:.4f}")
    trained = load_lm(out / "model")
    results["mor"] = _nll(trained, held, "causal", progress, "eval MoR (causal)")
    results["mor_topk"] = _nll(trained, held, "topk", progress, "eval MoR (top-k)")
    log(
        f"MoR-{spec.recursions} expert: NLL {results['mor']['nll']:.4f} causal / {results['mor_topk']['nll']:.4f} "
        f"top-k (before uptraining {results['mor_before']['nll']:.4f})"
    )
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return results
