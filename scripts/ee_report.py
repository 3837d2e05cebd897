"""Render ``depthmux ee bench --json`` (and ``ee eval --json``) results as the markdown tables of
docs/ee_results.md.

    python scripts/ee_report.py docs/results/ee_bench.json [docs/results/ee_eval_400.json ...]
"""

from __future__ import annotations

import json
import sys


def bench_table(res: dict) -> str:
    lines = [
        f"exit after {res['exit_layer']} of {res['num_layers']} layers; {res['prompts']} held-out prompts of "
        f"{res['prompt_tokens']} tokens, {res['max_new_tokens']} greedy tokens each, {res['device']}, "
        f"{res['rounds']} round(s)",
        "",
        "| batch | configuration | tokens/s | over deep | token agreement | identical sequences | exit rate | "
        "wrong-exit rate (verified) | draft acceptance | final threshold |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def f(r, key, fmt="{:.3f}"):
        return fmt.format(r[key]) if r.get(key) is not None else "-"

    for r in res["results"]:
        wrong = f"{r['wrong_exit_rate']:.3f} ({r['verified_exits']})" if "wrong_exit_rate" in r else "-"
        lines.append(
            f"| {r['batch_size']} | {r['config']} | {r['tokens_per_s']:.1f} | {r['speedup_vs_deep']:.2f}x | "
            f"{r['token_agreement']:.3f} | {r['exact']:.3f} | {f(r, 'exit_rate')} | {wrong} | "
            f"{f(r, 'acceptance_rate') if r['config'].startswith('speculative') else '-'} | "
            f"{f(r, 'final_threshold') if not r['config'].startswith('speculative') else '-'} |"
        )
    return "\n".join(lines)


def eval_row(res: dict, name: str) -> str:
    return (
        f"| {name} | {res['exit_layer']}/{res['num_layers']} | {res['shallow']['nll']:.3f} | "
        f"{res['deep']['nll']:.3f} | "
        f"{res['exit_agreement']:.3f} | {res['exit_confidence']:.3f} |"
    )


if __name__ == "__main__":
    with open(sys.argv[1]) as fh:
        print(bench_table(json.load(fh)))
    if len(sys.argv) > 2:
        print("\n| model | exit | shallow NLL | deep NLL | shallow = deep argmax | mean confidence |")
        print("|---|---|---|---|---|---|")
        for path in sys.argv[2:]:
            with open(path) as fh:
                print(eval_row(json.load(fh), path))
