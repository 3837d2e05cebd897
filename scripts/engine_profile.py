"""Profile the decode engine on a small version of the bench-decode workload (torch.profiler, CPU).

    OMP_NUM_THREADS=2 python scripts/engine_profile.py --model smollm2 --policy depthwise --top 25

Prints the ops with the most self CPU time and the wall time of HF static batching next to the engine's.
"""

from __future__ import annotations

import argparse
import time

from torch.profiler import ProfilerActivity, profile

from depthmux.engine import as_recursive_model
from depthmux.lm import HFCausalLMAdapter, load_lm, load_saved_tokenizer, pretrained_model_dir
from depthmux.recipes.decode_bench import DecodeBenchSpec, make_workload, run_engine, run_hf_static


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--policy", default="depthwise")
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--hf", action="store_true", help="also time HF static batching")
    args = ap.parse_args()
    d = pretrained_model_dir(args.model)
    lm, tok = load_lm(d).eval(), load_saved_tokenizer(d)
    hf = lm.model if isinstance(lm, HFCausalLMAdapter) else lm
    rec = as_recursive_model(hf).eval()
    spec = DecodeBenchSpec(num_requests=args.requests, prompt_len=(16, 64), output_len=(8, 24), batch=args.batch)
    work = make_workload(spec, tok, rec.config.vocab_size)
    run_engine(rec, work[:2], args.policy, args.batch)  # warm-up
    if args.hf:
        run_hf_static(hf, work[:2], args.batch, tok.pad_token_id or 0)  # warm-up, as the engine's
        r = run_hf_static(hf, work, args.batch, tok.pad_token_id or 0)
        print(f"HF static: {r['tokens_per_s']:.1f} tokens/s")
    t = time.perf_counter()
    r, llm = run_engine(rec, work, args.policy, args.batch)
    print(
        f"engine {args.policy}: {r['tokens_per_s']:.1f} tokens/s ({time.perf_counter() - t:.1f} s, "
        f"{llm.stats.steps} steps)"
    )
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run_engine(rec, work, args.policy, args.batch)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))


if __name__ == "__main__":
    main()
