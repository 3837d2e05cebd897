"""A/B of two engine versions: run this same script under two source trees, alternating, e.g.

    for i in 1 2 3 4; do
        PYTHONPATH=/path/old/src python scripts/engine_ab.py MOR_DIR old
        PYTHONPATH=/path/new/src python scripts/engine_ab.py MOR_DIR new
    done >> ab.jsonl

Each run: the quick ``bench-decode`` workload (16 requests), the engine only (no HF), vanilla SmolLM2 and
the MoR model, both depth policies, warmed up first; prints one JSON line of tokens/s. Uses only names
that exist in both versions (``make_workload``, ``run_engine``, ``_load``). Compare medians over the
alternating runs: absolute tokens/s of separate processes are noisy on a shared CPU.
"""

from __future__ import annotations

import json
import sys

import torch

from depthmux.engine import as_recursive_model
from depthmux.lm import HFCausalLMAdapter
from depthmux.recipes.decode_bench import BenchRequest, DecodeBenchSpec, _load, make_workload, quick_spec, run_engine


def main() -> None:
    mor_dir, version = sys.argv[1], sys.argv[2]
    torch.set_num_threads(2)
    spec = quick_spec(DecodeBenchSpec(mor_model=mor_dir))
    vanilla, tok = _load(spec.model, "--model", "")
    mor, _ = _load(spec.mor_model, "--mor-model", "")
    hf = vanilla.model if isinstance(vanilla, HFCausalLMAdapter) else vanilla
    vanilla = as_recursive_model(hf).eval()
    workload = make_workload(spec, tok, min(vanilla.config.vocab_size, mor.config.vocab_size))
    models = {"vanilla": vanilla, "mor": mor}
    warm = [BenchRequest(r.prompt[:8], 2) for r in workload[:2]]
    for model in models.values():
        for policy in ("lockstep", "depthwise"):
            run_engine(model, warm, policy, spec.batch)
    out = {}
    for name, model in models.items():
        for policy in ("lockstep", "depthwise"):
            res, _ = run_engine(model, workload, policy, spec.batch)
            out[f"{name}/{policy}"] = round(res["tokens_per_s"], 2)
    print(json.dumps({"version": version, **out}), flush=True)


if __name__ == "__main__":
    main()
