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

VARIANTS = {  # name -> (sharing, N_r, router, extra RecursiveConfig fields)
    "vanilla": ("none", 1, None, {}),
    "recursive-2 (middle_cycle)": ("middle_cycle", 2, None, {}),
    "recursive-3 (middle_cycle)": ("middle_cycle", 3, None, {}),
    # expert choice, the published update H + g*f(H) (SPEC 4), and its gate-only control: capacity 1 at
    # every recursion, so every token runs every recursion and only the gate differs from recursive-2
    "MoR-2 expert": ("middle_cycle", 2, "expert", {}),
    "gate-only-2 expert": ("middle_cycle", 2, "expert", {"mor_capacity": [1.0, 1.0]}),
    # the same pair with the earlier update H + g*(f(H) - H) ("gated_delta")
    "MoR-2 expert gated_delta": ("middle_cycle", 2, "expert", {"mor_update": "gated_delta"}),
    "gate-only-2 expert gated_delta": (
        "middle_cycle",
        2,
        "expert",
        {"mor_update": "gated_delta", "mor_capacity": [1.0, 1.0]},
    ),
    "MoR-3 expert": ("middle_cycle", 3, "expert", {}),
    "MoR-2 token": ("middle_cycle", 2, "token", {}),
    "MoR-3 token": ("middle_cycle", 3, "token", {}),
    "cycle-2": ("cycle", 2, None, {}),
    "sequence-2": ("sequence", 2, None, {}),
    "middle_sequence-2": ("middle_sequence", 2, None, {}),
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
    ap.add_argument("--seeds", default="0", help="comma-separated training seeds, e.g. 0,1,2 (data split: seed 0)")
    ap.add_argument("--only", nargs="*", help="variant names to run (default: all), e.g. --only 'MoR-2 expert'")
    ap.add_argument(
        "--bce-coef",
        type=float,
        default=None,
        help="expert-choice router BCE coefficient (default: the config's, 0.001 as in SPEC 4)",
    )
    ap.add_argument(
        "--aux-router",
        action="store_true",
        help="expert-choice: decode with a separate auxiliary router trained only by the BCE",
    )
    args = ap.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res_path = out / "results.json"
    results = json.loads(res_path.read_text()) if res_path.exists() else {}
    data = LMDataSpec(
        corpus="shakespeare",
        tokenizer=f"bpe:{args.vocab}",
        block_size=args.block_size,
        holdout=0.1,
        seed=0,
        max_eval_blocks=args.eval_blocks,
    )
    tok, train, held = prepare_lm_data(data)
    print(f"data: {len(train)} train blocks, {len(held)} held-out blocks of {args.block_size} tokens", flush=True)
    seeds = [int(x) for x in args.seeds.split(",")]
    if args.only and (unknown := [n for n in args.only if n not in VARIANTS]):
        raise SystemExit(f"error: unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    for seed in seeds:
        for name, (sharing, nr, router, extra) in VARIANTS.items():
            key = name if seed == 0 else f"{name} @seed{seed}"  # seed 0 keeps the earlier results' keys
            if (args.only and name not in args.only) or key in results:
                continue
            results[key] = run_variant(args, name, sharing, nr, router, extra, seed, out, tok, train, held, data)
            res_path.write_text(json.dumps(results, indent=2))


def run_variant(args, name, sharing, nr, router, extra, seed, out, tok, train, held, data) -> dict:
    """Train one variant to the FLOP budget and evaluate it on the held-out blocks."""
    spec = LMModelSpec(
        sharing=sharing,
        recursions=nr,
        router=router,
        hidden=args.hidden,
        layers=args.layers,
        heads=args.heads,
        seed=seed,
    )
    model = build_lm_model(spec, len(tok), tok.eos_token_id)
    cfg = model.config
    for field, value in extra.items():
        setattr(cfg, field, value)
    if router == "expert" and args.bce_coef is not None:
        cfg.mor_bce_coef = args.bce_coef
    if router == "expert" and args.aux_router:
        cfg.mor_aux_router = True
    if extra or args.aux_router:  # rebuild from the edited config with the same seed (validated there)
        torch.manual_seed(seed)
        model = type(model)(type(cfg).from_dict(cfg.to_dict())).train()
    fl = measure_forward_flops(model, train, batch_size=args.batch_size)
    tokens_per_step = args.batch_size * args.block_size
    steps = max(10, round(args.budget / (fl["train_flops_per_token"] * tokens_per_step)))
    run_dir = out / (name.split(" (")[0].replace(" ", "_") + ("" if seed == 0 else f"-seed{seed}"))
    train_cfg = LMTrainConfig(
        out_dir=str(run_dir),
        steps=steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=max(1, steps // 10),
        decay_fraction=0.2,
        min_lr_ratio=0.1,
        eval_batch_size=16,
        seed=seed,
        progress=False,
        log_every=10,
        resume=RunFolder(run_dir).holds_run(),
    )  # continue an interrupted variant
    t0 = time.time()
    r = train_lm(
        model, train, held, train_cfg, tokenizer=tok, extra_state={"data": vars(data), "model_spec": vars(spec)}
    )
    mcfg = model.config
    entry = {
        "variant": name,
        "seed": seed,
        "sharing": sharing,
        "recursions": nr,
        "router": router,
        "mor_update": mcfg.mor_update if router else None,
        "mor_capacity": mcfg.mor_capacity if router else None,
        "steps": steps,
        "params": model.parameter_counts(),
        "train_flops": r.train_flops,
        "tokens": r.tokens,
        "train_flops_per_token_at_init": fl["train_flops_per_token"],
        "seconds": time.time() - t0,
        "mor_bce_coef": mcfg.mor_bce_coef if router == "expert" else None,
        "mor_aux_router": bool(mcfg.mor_aux_router),
        "nll": r.eval["nll"],
        "ppl": r.eval["ppl"],
        "router_stats": r.eval["router_stats"],
    }
    if router == "expert":  # the eval default above is the causal rule; add top-k
        topk = evaluate_lm(model, held, 16, routing="topk")
        entry["nll_topk"] = topk["nll"]
        entry["router_stats_topk"] = topk["router_stats"]
    agree = entry.get("router_stats_topk", {}).get("causal_agreement")
    print(
        f"{name} seed {seed}: {steps} steps, {r.train_flops:.3e} FLOPs, {r.tokens} tokens, "
        f"held-out NLL {r.eval['nll']:.4f}"
        + (f", top-k NLL {entry['nll_topk']:.4f}, agreement {'/'.join(f'{a:.3f}' for a in agree)}" if agree else "")
        + f" ({time.time() - t0:.0f} s)",
        flush=True,
    )
    return entry


if __name__ == "__main__":
    main()
