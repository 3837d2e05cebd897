"""Soak AsyncLLM with 10,000 short requests on a tiny model (issue 16, "memory is flat").

Random arrivals, 20% abandoned mid-stream; prints RSS and live Python objects at 1k / 5k / 10k requests,
the KV pages left at the end and the outputs that differ from ``LLM.generate`` of that prompt alone.
Usage: ``python scripts/engine_soak.py [--requests N] [--json out.json]``. The model is a random tiny MoR
model (expert router, 6 layers, 2 recursions, d = 32) with the SmolLM2 tokenizer.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from depthmux.lm import load_saved_tokenizer, pretrained_model_dir
from depthmux.recipes.engine_soak import SoakSpec, run_soak
from depthmux.recursion import RecursiveConfig, RecursiveForCausalLM


def tiny_model(vocab: int) -> RecursiveForCausalLM:
    torch.manual_seed(0)
    cfg = RecursiveConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        sharing="middle_cycle",
        num_recursions=2,
        mor_router="expert",
    )
    model = RecursiveForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "router" in name:
                p.normal_(0, 1.0)
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--json", default=None)
    ap.add_argument("--every", type=int, default=0, help="also sample RSS and objects every K requests")
    args = ap.parse_args()
    torch.set_num_threads(1)
    tok = load_saved_tokenizer(pretrained_model_dir("smollm2"))
    n = args.requests
    marks = {max(1, n // 10), n // 2, n}
    if args.every > 0:
        marks |= set(range(args.every, n + 1, args.every))
    marks = tuple(sorted(marks))
    spec = SoakSpec(num_requests=n, checkpoints=marks, log_every=max(1, n // 20))
    t0 = time.monotonic()
    res = run_soak(tiny_model(len(tok)), tok, spec, max_batch_items=32)
    took = time.monotonic() - t0
    first = res.checkpoints[0]
    print(f"requests {n}: finished {res.finished}, aborted {res.aborted}, mismatches {res.mismatches}, {took:.0f} s")
    for c in res.checkpoints:
        print(
            f"  at {c['requests']:>6}: RSS {c['rss_bytes'] / 2**20:8.1f} MiB "
            f"({100 * (c['rss_bytes'] / first['rss_bytes'] - 1):+.2f}%), objects {c['objects']} "
            f"({100 * (c['objects'] / first['objects'] - 1):+.2f}%)"
        )
    print(
        f"end: KV pages {res.kv_pages_end}, KV bytes {res.kv_bytes_end}, engine requests {res.engine_requests_end}, "
        f"output states {res.processor_states_end}; snapshot {res.snapshot_end}"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**res.__dict__, "seconds": took}, f, indent=1)


if __name__ == "__main__":
    main()
