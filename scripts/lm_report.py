"""Markdown tables from the results.json files of lm_equal_compute.py / lm_smollm2_uptrain.py.

A results file with several seeds (``lm_equal_compute.py --seeds 0,1,2``) gives one row per variant:
mean ± std over seeds and the difference to vanilla paired by seed.

    python scripts/lm_report.py runs/lm_equal_compute/results.json runs/lm_smollm2/results.json
"""

from __future__ import annotations

import json
import sys


def fmt_list(xs, digits=3):
    return "/".join(f"{x:.{digits}f}" for x in xs) if xs else "-"


def equal_compute(res: dict) -> str:
    base = res.get("vanilla", {}).get("nll")
    rows = [
        "| model | unique params (non-emb.) | steps | tokens | train FLOPs | held-out NLL | Δ vs vanilla | "
        "tokens per recursion (share) | causal vs top-k agreement per recursion |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, v in res.items():
        rs = v.get("router_stats", {})
        agree = v.get("router_stats_topk", {}).get("causal_agreement")
        delta = f"{v['nll'] - base:+.4f}" if base is not None else "-"
        nll = f"{v['nll']:.4f}"
        if "nll_topk" in v:
            nll += f" (top-k {v['nll_topk']:.4f})"
        rows.append(
            f"| {name} | {v['params']['total'] / 1e6:.2f}M ({v['params']['non_embedding'] / 1e6:.2f}M) | "
            f"{v['steps']} | {v['tokens']:,} | {v['train_flops']:.3e} | {nll} | {delta} | "
            f"{fmt_list(rs.get('share_per_recursion'), 2)} | {fmt_list(agree)} |"
        )
    return "\n".join(rows)


def across_seeds(res: dict) -> str:
    """Mean ± std (sample std) of held-out NLL per variant over the seeds present, with the paired
    difference to vanilla of the same seed (seed-to-seed data order and init cancel in the pair)."""
    import statistics

    by_variant: dict[str, dict[int, float]] = {}
    for key, v in res.items():
        by_variant.setdefault(v.get("variant", key), {})[v.get("seed", 0)] = v["nll"]
    base = by_variant.get("vanilla", {})

    def ms(xs: list[float]) -> str:
        return f"{statistics.fmean(xs):.4f} ± {statistics.stdev(xs) if len(xs) > 1 else 0.0:.4f}"

    rows = [
        "| model | seeds | held-out NLL (mean ± std) | Δ vs vanilla, paired by seed (mean ± std) | per seed |",
        "|---|---|---|---|---|",
    ]
    for name, per_seed in by_variant.items():
        seeds = sorted(per_seed)
        nll = [per_seed[s] for s in seeds]
        paired = [per_seed[s] - base[s] for s in seeds if s in base]
        delta = ms(paired) if paired and name != "vanilla" else "-"
        per = " / ".join(f"{x:.4f}" for x in nll)
        rows.append(f"| {name} | {','.join(map(str, seeds))} | {ms(nll)} | {delta} | {per} |")
    # what routing adds beyond its gate: each MoR variant against its gate-only control (same update rule)
    controls = [(n, n.replace("MoR-", "gate-only-", 1)) for n in by_variant if n.startswith("MoR-")]
    controls = [(m, c) for m, c in controls if c in by_variant]
    if controls:
        rows += [
            "",
            "| routing effect | seeds | Δ NLL (routed minus gate-only), paired by seed (mean ± std) | per seed |",
            "|---|---|---|---|",
        ]
        for mor, ctl in controls:
            seeds = sorted(set(by_variant[mor]) & set(by_variant[ctl]))
            diffs = [by_variant[mor][s] - by_variant[ctl][s] for s in seeds]
            per = " / ".join(f"{x:+.4f}" for x in diffs)
            rows.append(f"| {mor} vs {ctl} | {','.join(map(str, seeds))} | {ms(diffs)} | {per} |")
    return "\n".join(rows)


def smollm2(res: dict) -> str:
    rows = ["| model | params | held-out NLL before | after uptraining | steps (tokens) |", "|---|---|---|---|---|"]
    for name, v in res.items():
        if name == "original":
            rows.append(f"| SmolLM2-135M (original) | {v['params']['total'] / 1e6:.1f}M | {v['nll']:.4f} | - | - |")
        else:
            rows.append(
                f"| {name} | {v['params']['total'] / 1e6:.1f}M | {v['nll_before']:.4f} | {v['nll_after']:.4f} | "
                f"{v['steps']} ({v['tokens']:,}) |"
            )
    return "\n".join(rows)


def main() -> None:
    for path in sys.argv[1:]:
        with open(path) as f:
            res = json.load(f)
        print(f"<!-- {path} -->")
        if "original" in res:
            print(smollm2(res))
        elif any(v.get("seed", 0) for v in res.values()):
            print(across_seeds(res))
        else:
            print(equal_compute(res))
        print()


if __name__ == "__main__":
    main()
