"""Markdown tables from the results.json files of lm_equal_compute.py / lm_smollm2_uptrain.py.

    python scripts/lm_report.py runs/lm_equal_compute/results.json runs/lm_smollm2/results.json
"""

from __future__ import annotations

import json
import sys


def fmt_list(xs, digits=3):
    return "/".join(f"{x:.{digits}f}" for x in xs) if xs else "-"


def equal_compute(res: dict) -> str:
    base = res.get("vanilla", {}).get("nll")
    rows = ["| model | unique params (non-emb.) | steps | tokens | train FLOPs | held-out NLL | Δ vs vanilla | "
            "tokens per recursion (share) | causal vs top-k agreement per recursion |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name, v in res.items():
        rs = v.get("router_stats", {})
        agree = v.get("router_stats_topk", {}).get("causal_agreement")
        delta = f"{v['nll'] - base:+.4f}" if base is not None else "-"
        nll = f"{v['nll']:.4f}"
        if "nll_topk" in v:
            nll += f" (top-k {v['nll_topk']:.4f})"
        rows.append(f"| {name} | {v['params']['total'] / 1e6:.2f}M ({v['params']['non_embedding'] / 1e6:.2f}M) | "
                    f"{v['steps']} | {v['tokens']:,} | {v['train_flops']:.3e} | {nll} | {delta} | "
                    f"{fmt_list(rs.get('share_per_recursion'), 2)} | {fmt_list(agree)} |")
    return "\n".join(rows)


def smollm2(res: dict) -> str:
    rows = ["| model | params | held-out NLL before | after uptraining | steps (tokens) |", "|---|---|---|---|---|"]
    for name, v in res.items():
        if name == "original":
            rows.append(f"| SmolLM2-135M (original) | {v['params']['total'] / 1e6:.1f}M | {v['nll']:.4f} | - | - |")
        else:
            rows.append(f"| {name} | {v['params']['total'] / 1e6:.1f}M | {v['nll_before']:.4f} | {v['nll_after']:.4f} | "
                        f"{v['steps']} ({v['tokens']:,}) |")
    return "\n".join(rows)


def main() -> None:
    for path in sys.argv[1:]:
        res = json.loads(open(path).read())
        print(f"<!-- {path} -->")
        print(smollm2(res) if "original" in res else equal_compute(res))
        print()


if __name__ == "__main__":
    main()
