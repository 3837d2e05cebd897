"""Ray Data prediction against the single-process ``mux predict`` on one generated Parquet file
(issue 18, "What it must show" 2): identical outputs, rows/s with 1 and 2 actors.

    python scripts/ray_predict_bench.py --rows 200000 --backbone tiny --out /tmp/rp.json
    python scripts/ray_predict_bench.py --rows 20000 --backbone minilm --out /tmp/rp_minilm.json

``tiny``: a random 3-layer BERT (d = 48) with the MiniLM tokenizer: the pipeline's own cost dominates.
``minilm``: the packaged MiniLM with N = 2 RevMUX adapters, untrained (random): the real per-row cost;
accuracy is not measured here, only throughput and equality. The local Ray has ``--num-cpus`` CPUs;
each actor reserves ``--cpus-per-actor`` of them (one torch thread). The single-process command runs
with one torch thread too. The load average of the machine is recorded before and after each run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path


def make_checkpoint(root: Path, backbone: str) -> Path:
    import torch
    from transformers import AutoTokenizer

    from depthmux.assets import minilm_path
    from depthmux.backbones import load_backbone
    from depthmux.multiplexing import LinearProbeHead, MultiplexedClassifier, MuxConfig

    if backbone == "tiny":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from tiny_families import save_family

        folder = str(save_family("bert", root / "tiny-bert", AutoTokenizer.from_pretrained(minilm_path())))
    else:
        folder = str(minilm_path())
    body = load_backbone(folder)
    torch.manual_seed(0)
    head = LinearProbeHead(body.hidden_size, 2)
    config = MuxConfig(n=2, backbone=folder, readout=body.readout_mode, label_names=["neg", "pos"])
    model = MultiplexedClassifier(config, body, head)
    with torch.no_grad():
        for p in [*head.parameters(), *model.trainable_state_dict().values()]:
            p.add_(torch.randn_like(p) * 0.2)
    model.save_pretrained(root / "n2")
    return root / "n2"


def make_parquet(path: Path, rows: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    words = [
        "the",
        "film",
        "was",
        "good",
        "bad",
        "slow",
        "quick",
        "dull",
        "bright",
        "long",
        "short",
        "plot",
        "actor",
        "scene",
        "music",
        "ending",
    ]
    texts = [" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(6 + i % 19)) for i in range(rows)]
    pq.write_table(pa.table({"id": list(range(rows)), "text": texts}), path, row_group_size=10_000)


def load() -> float:
    return os.getloadavg()[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--backbone", choices=["tiny", "minilm"], default="tiny")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--num-cpus", type=int, default=2)
    ap.add_argument("--cpus-per-actor", type=float, default=0.5)
    ap.add_argument("--work", default="/tmp/ray_predict_bench")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    import pyarrow.parquet as pq
    import ray
    import torch

    from depthmux.recipes.mux_predict import MuxPredictConfig, predict_file
    from depthmux.recipes.ray_predict import RayPredictConfig, predict_with_ray
    from depthmux.utils.ray_cluster import start_ray

    torch.set_num_threads(1)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    ckpt = make_checkpoint(work, args.backbone)
    src = work / "in.parquet"
    make_parquet(src, args.rows)
    report = {"rows": args.rows, "backbone": args.backbone, "batch_size": args.batch_size, "runs": []}

    before = load()
    single = predict_file(
        MuxPredictConfig(str(ckpt), str(src), str(work / "single.parquet"), batch_size=args.batch_size)
    )
    report["runs"].append({"how": "mux predict (1 process, 1 thread)", "seconds": single.seconds,
                           "rows_per_s": single.rows_per_s, "load_before": before, "load_after": load()})  # fmt: skip
    want = pq.read_table(work / "single.parquet")

    start_ray(None, args.num_cpus)  # local, on loopback only
    for actors in (1, 2):
        before = load()
        t0 = time.perf_counter()
        cfg = RayPredictConfig(str(ckpt), str(src), str(work / f"ray{actors}"), batch_size=args.batch_size,
                               actors=actors, cpus_per_actor=args.cpus_per_actor)  # fmt: skip
        s = predict_with_ray(cfg)
        wall = time.perf_counter() - t0
        got = pq.read_table(work / f"ray{actors}")
        same = all(got.column(c).equals(want.column(c)) for c in want.column_names)
        report["runs"].append({"how": f"--ray, {actors} actor(s) x {args.cpus_per_actor} CPU", "seconds": s.seconds,
                               "rows_per_s": s.rows_per_s, "wall_with_model_check_s": wall,
                               "identical_to_single": same, "load_before": before, "load_after": load()})  # fmt: skip
        print(json.dumps(report["runs"][-1]), flush=True)
    ray.shutdown()
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
