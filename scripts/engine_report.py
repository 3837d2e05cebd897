"""Render a ``depthmux lm bench-decode --json`` result as the markdown tables of docs/engine_results.md.

python scripts/engine_report.py docs/results/engine_full.json
"""

from __future__ import annotations

import json
import sys


def report(result: dict) -> str:
    spec, w = result["spec"], result["workload"]
    lines = [
        f"{w['requests']} requests, {w['prompt_tokens']} prompt / {w['generated_tokens']} generated tokens, "
        f"prompts {spec['prompt_len'][0]}-{spec['prompt_len'][1]}, outputs {spec['output_len'][0]}-"
        f"{spec['output_len'][1]}, B = {spec['batch']}, {spec['repeats']} repetition(s), {result['threads']} threads",
        "",
        "| model | configuration | tokens/s (median; runs) | latency median (s) | latency p95 (s) |",
        "|---|---|---|---|---|",
    ]
    for key, c in result["configs"].items():
        model, config = key.split("/")
        runs = ", ".join(f"{t:.1f}" for t in c["tokens_per_s_runs"])
        lines.append(
            f"| {model} | {config} | {c['tokens_per_s']:.1f} ({runs}) | {c['latency_median_s']:.1f} | "
            f"{c['latency_p95_s']:.1f} |"
        )
    cm, cv = result["counts"]["mor"], result["counts"]["vanilla"]
    dl = result["depthwise_over_lockstep"]
    lines += [
        "",
        "* FLOPs per generated token (declared, prefill included): "
        f"vanilla {cv['flops_per_generated_token'] / 1e9:.3f} G,"
        f" MoR {cm['flops_per_generated_token'] / 1e9:.3f} G; average recursion depth {cm['average_depth']:.3f} of "
        f"{result['num_recursions']} (exits by depth {cm['exits_by_depth']})",
        f"* `compute_ceiling` = {result['compute_ceiling']:.3f}; `fraction_of_ceiling` = "
        f"{result['fraction_of_ceiling']:.3f}; `speedup_vs_hf_static` = {result['speedup_vs_hf_static']:.3f}; "
        f"depth-wise / lockstep: vanilla {dl['vanilla']:.3f}, MoR {dl['mor']:.3f}; MoR / vanilla: "
        + ", ".join(f"{k} {v:.3f}" for k, v in result["mor_over_vanilla"].items()),
        "",
        "| KV | bytes per cached token | of vanilla | block ratio measured | SPEC 4 expected | admitted at "
        f"{result['kv']['budget_bytes'] / 2**20:.0f} MiB |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("vanilla", "recursion_wise", "shared"):
        k = result["kv"][name]
        lines.append(
            f"| {name} | {k['kv_bytes_per_token']:.0f} | {k['over_vanilla']:.3f} | {k['block_ratio_measured']:.3f} | "
            f"{k['block_ratio_expected_spec4']:.3f} | {k['admitted_sequences']} |"
        )
    if "breakdown" in result:
        cols = ["attention", "kv_paging", "mlp", "shared_block", "router", "lm_head", "scheduler", "runner_other"]
        lines += [
            "",
            "| run (seconds) | total | " + " | ".join(cols) + " |",
            "|---|---|" + "---|" * len(cols),
        ]
        for key, b in result["breakdown"].items():
            lines.append(f"| {key} | {b['seconds']:.1f} | " + " | ".join(f"{b[c]:.2f}" for c in cols) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        print(report(json.load(f)))
