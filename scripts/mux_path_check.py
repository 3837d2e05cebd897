"""Check that a reported RevMUX accuracy is the accuracy of the path a user runs (issue 7, SPEC 1.1).

For one saved checkpoint and a data split, evaluate the same random groupings (the seeds that
``depthmux mux eval`` uses) twice:

* the cached path (what training, best-epoch selection and ``mux eval`` use): prefill states
  from :class:`~depthmux.multiplexing.features.FeatureCache`;
* the real path (what ``predict`` and the benchmark run): raw texts -> tokenizer -> embeddings ->
  prefill layers -> adapters -> frozen body, in the same groups.

Prints both accuracies per grouping, how many predictions differ and the largest logit
difference; exits 1 if any prediction differs.

    python scripts/mux_path_check.py runs/sst2/n2-l1-reversible/best --task sst2 --data-dir ../shared/data/glue
"""

from __future__ import annotations

import argparse
import statistics

import torch

from depthmux.data import load_task
from depthmux.multiplexing.evaluation import logits_cached
from depthmux.multiplexing.features import build_feature_cache
from depthmux.multiplexing.model import load_classifier, whole_groups


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--task", default="sst2")
    ap.add_argument("--split", default="dev")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--shuffles", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0, help="the first grouping's seed (as mux eval)")
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()

    model = load_classifier(args.checkpoint).eval()
    data = load_task(args.task, args.split, args.data_dir)
    cache = build_feature_cache(model.body, data, model.cache_layers)
    batch = whole_groups(args.batch_size, model.group_size)
    acc_cached, acc_real, differing, max_diff = [], [], 0, 0.0
    with torch.no_grad():
        for r in range(args.shuffles):
            order = torch.randperm(len(data), generator=torch.Generator().manual_seed(args.seed + r))
            cached = logits_cached(model, cache, order, batch)  # row i = example i
            real = torch.empty_like(cached)
            for s in range(0, len(order), batch):
                idx = order[s : s + batch]
                real[idx] = model(model.body.tokenize([data.texts[i] for i in idx.tolist()])).logits
            labels = cache.labels
            acc_cached.append((cached.argmax(-1) == labels).float().mean().item() * 100)
            acc_real.append((real.argmax(-1) == labels).float().mean().item() * 100)
            differing += int((cached.argmax(-1) != real.argmax(-1)).sum())
            max_diff = max(max_diff, float((cached - real).abs().max()))
            print(f"grouping {r}: cached {acc_cached[-1]:.2f}  real {acc_real[-1]:.2f}", flush=True)

    def summary(xs: list[float]) -> str:
        return f"{statistics.fmean(xs):.2f} ± {statistics.stdev(xs) if len(xs) > 1 else 0.0:.2f}"

    print(
        f"cached path {summary(acc_cached)}; real path {summary(acc_real)}; "
        f"{differing} of {len(data) * args.shuffles} predictions differ; max |Δ logit| {max_diff:.2e}"
    )
    raise SystemExit(1 if differing else 0)


if __name__ == "__main__":
    main()
