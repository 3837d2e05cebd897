"""SmolLM2-135M -> 3-loop recursive model (SPEC 3): Stepwise / Average init, with and without
LoRA relaxation, briefly uptrained on Shakespeare on CPU; held-out NLL before and after,
next to the original model on the same held-out blocks.

    OMP_NUM_THREADS=1 python scripts/lm_smollm2_uptrain.py --out runs/lm_smollm2

Results in ``<out>/results.json`` (written after each variant; finished ones are skipped).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from depthmux.assets import smollm2_path
from depthmux.lm import evaluate_lm, load_lm
from depthmux.recipes.lm import LMDataSpec, LMModelSpec, build_lm_model, prepare_lm_data
from depthmux.training.lm import LMTrainConfig, train_lm
from depthmux.utils.run_folder import RunFolder


def main() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/lm_smollm2")
    ap.add_argument("--recursions", type=int, default=3)
    ap.add_argument("--sharing", default="cycle")
    ap.add_argument("--lora-rank", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--block-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--eval-blocks", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res_path = out / "results.json"
    results = json.loads(res_path.read_text()) if res_path.exists() else {}
    base = smollm2_path()
    data = LMDataSpec(
        corpus="shakespeare",
        tokenizer=str(base),
        block_size=args.block_size,
        holdout=0.1,
        seed=args.seed,
        max_eval_blocks=args.eval_blocks,
    )
    tok, train, held = prepare_lm_data(data)
    print(f"data: {len(train)} train / {len(held)} held-out blocks of {args.block_size}", flush=True)

    def save():
        res_path.write_text(json.dumps(results, indent=2))

    if "original" not in results:
        t0 = time.time()
        orig = load_lm(base)
        ev = evaluate_lm(orig, held, batch_size=8)
        results["original"] = {
            "nll": ev["nll"],
            "ppl": ev["ppl"],
            "params": orig.parameter_counts(),
            "eval_seconds": time.time() - t0,
        }
        save()
        print(f"original: NLL {ev['nll']:.4f} ({time.time() - t0:.0f} s)", flush=True)
        del orig

    for init in ("stepwise", "average"):
        for rank in (0, args.lora_rank):
            name = f"{args.sharing}-{args.recursions} {init}" + (f" + LoRA {rank}" if rank else "")
            if name in results:
                continue
            t0 = time.time()
            spec = LMModelSpec(
                from_pretrained=str(base),
                convert=True,
                sharing=args.sharing,
                recursions=args.recursions,
                init=init,
                lora_rank=rank,
                seed=args.seed,
            )
            model = build_lm_model(spec)
            before = evaluate_lm(model, held, batch_size=8)
            run_dir = out / name.replace(" ", "_").replace("+", "")
            cfg = LMTrainConfig(
                out_dir=str(run_dir),
                steps=args.steps,
                resume=RunFolder(run_dir).holds_run(),
                batch_size=args.batch_size,
                lr=args.lr,
                warmup_steps=max(1, args.steps // 10),
                decay_fraction=0.2,
                min_lr_ratio=0.1,
                weight_decay=0.0,
                eval_batch_size=8,
                seed=args.seed,
                progress=False,
            )
            r = train_lm(
                model, train, held, cfg, tokenizer=tok, extra_state={"data": vars(data), "model_spec": vars(spec)}
            )
            results[name] = {
                "init": init,
                "lora_rank": rank,
                "params": model.parameter_counts(),
                "nll_before": before["nll"],
                "nll_after": r.eval["nll"],
                "ppl_after": r.eval["ppl"],
                "steps": args.steps,
                "tokens": r.tokens,
                "train_flops": r.train_flops,
                "seconds": time.time() - t0,
            }
            save()
            print(f"{name}: NLL {before['nll']:.4f} -> {r.eval['nll']:.4f} ({time.time() - t0:.0f} s)", flush=True)
            del model


if __name__ == "__main__":
    main()
