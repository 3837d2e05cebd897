"""Equal-compute comparison of vanilla / recursive / MoR decoders on Shakespeare (SPEC 4).

Every variant has the same width and effective depth; the number of optimizer steps is chosen
so that each run spends the same measured training FLOPs (``--budget`` ; FLOPs per token are
measured on one batch at initialisation, as the model declares them: depthmux.lm.measure_forward_flops).
Cheaper-per-token variants (MoR) therefore see more tokens. Results go to ``<out>/results.json`` (one entry per
variant, written as each run finishes; finished variants are skipped on a rerun).

    OMP_NUM_THREADS=1 python scripts/lm_equal_compute.py --out runs/lm_equal_compute
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from depthmux.lm import evaluate_lm, measure_forward_flops
from depthmux.recipes.lm import LMDataSpec, LMModelSpec, build_lm_model, prepare_lm_data
from depthmux.training.lm import LMTrainConfig, train_lm
from depthmux.utils.run_folder import RunFolder

VARIANTS = {  # name -> (sharing, N_r, router)
    "vanilla": ("none", 1, None),
    "recursive-2 (middle_cycle)": ("middle_cycle", 2, None),
    "recursive-3 (middle_cycle)": ("middle_cycle", 3, None),
    "MoR-2 expert": ("middle_cycle", 2, "expert"),
    "MoR-3 expert": ("middle_cycle", 3, "expert"),
    "MoR-2 token": ("middle_cycle", 2, "token"),
    "MoR-3 token": ("middle_cycle", 3, "token"),
    "cycle-2": ("cycle", 2, None),
    "sequence-2": ("sequence", 2, None),
    "middle_sequence-2": ("middle_sequence", 2, None),
}


def main() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/lm_equal_compute")
    ap.add_argument("--budget", type=float, default=2.8e12, help="training FLOPs per run")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--eval-blocks", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*", help="variant names to run (default: all), e.g. --only 'MoR-2 expert'")
    ap.add_argument("--bce-coef", type=float, default=None,
                    help="expert-choice router BCE coefficient (default: the config's, 0.001 as in SPEC 4)")
    ap.add_argument("--aux-router", action="store_true",
                    help="expert-choice: decode with a separate auxiliary router trained only by the BCE")
    args = ap.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res_path = out / "results.json"
    results = json.loads(res_path.read_text()) if res_path.exists() else {}
    data = LMDataSpec(corpus="shakespeare", tokenizer=f"bpe:{args.vocab}", block_size=args.block_size,
                      holdout=0.1, seed=args.seed, max_eval_blocks=args.eval_blocks)
    tok, train, held = prepare_lm_data(data)
    print(f"data: {len(train)} train blocks, {len(held)} held-out blocks of {args.block_size} tokens", flush=True)
    for name, (sharing, nr, router) in VARIANTS.items():
        if (args.only and name not in args.only) or name in results:
            continue
        spec = LMModelSpec(sharing=sharing, recursions=nr, router=router, hidden=args.hidden, layers=args.layers,
                           heads=args.heads, seed=args.seed)
        model = build_lm_model(spec, len(tok), tok.eos_token_id)
        if args.bce_coef is not None and router == "expert":
            model.config.mor_bce_coef = args.bce_coef
        if args.aux_router and router == "expert":  # rebuild with the auxiliary router (same seed)
            cfg = model.config
            cfg.mor_aux_router = True
            torch.manual_seed(args.seed)
            model = type(model)(cfg).train()
        fl = measure_forward_flops(model, train, batch_size=args.batch_size)
        tokens_per_step = args.batch_size * args.block_size
        steps = max(10, round(args.budget / (fl["train_flops_per_token"] * tokens_per_step)))
        run_dir = out / name.split(" (")[0].replace(" ", "_")
        cfg = LMTrainConfig(out_dir=str(run_dir), steps=steps, batch_size=args.batch_size, lr=args.lr,
                            warmup_steps=max(1, steps // 10), decay_fraction=0.2, min_lr_ratio=0.1,
                            eval_batch_size=16, seed=args.seed, progress=False, log_every=10,
                            resume=RunFolder(run_dir).holds_run())  # continue an interrupted variant
        t0 = time.time()
        r = train_lm(model, train, held, cfg, tokenizer=tok,
                     extra_state={"data": vars(data), "model_spec": vars(spec)})
        entry = {"sharing": sharing, "recursions": nr, "router": router, "steps": steps,
                 "params": model.parameter_counts(), "train_flops": r.train_flops, "tokens": r.tokens,
                 "train_flops_per_token_at_init": fl["train_flops_per_token"], "seconds": time.time() - t0,
                 "mor_bce_coef": getattr(model.config, "mor_bce_coef", None) if router == "expert" else None,
                 "mor_aux_router": bool(getattr(model.config, "mor_aux_router", False)),
                 "nll": r.eval["nll"], "ppl": r.eval["ppl"], "router_stats": r.eval["router_stats"]}
        if router == "expert":  # the eval default above is the causal rule; add top-k
            topk = evaluate_lm(model, held, 16, routing="topk")
            entry["nll_topk"] = topk["nll"]
            entry["router_stats_topk"] = topk["router_stats"]
        results[name] = entry
        res_path.write_text(json.dumps(results, indent=2))
        agree = entry.get("router_stats_topk", {}).get("causal_agreement")
        print(f"{name}: {steps} steps, {r.train_flops:.3e} FLOPs, {r.tokens} tokens, held-out NLL {r.eval['nll']:.4f}"
              + (f", top-k NLL {entry['nll_topk']:.4f}, agreement {'/'.join(f'{a:.3f}' for a in agree)}"
                 if agree else "")
              + f" ({time.time() - t0:.0f} s)", flush=True)
        del model
        torch.set_num_threads(torch.get_num_threads())


if __name__ == "__main__":
    main()
