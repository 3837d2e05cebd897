"""The RevMUX recipe: teacher, adapters for a grid of (N, l, mixer), grouped evaluation and the
speed benchmark, with every artifact on disk (SPEC 1.2-1.5). The CLI is a thin layer over this.

Layout of ``out_dir``::

    teacher/                 frozen probe head (a MultiplexedClassifier checkpoint with N = 1)
    n2-l0-reversible/last    resumable training state        (atomic)
    n2-l0-reversible/best    best-on-validation adapters      (reload with from_pretrained)
    results.json / results.md / results.png
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from depthmux.backbones import FrozenBackbone, load_backbone
from depthmux.data import load_task
from depthmux.errors import require
from depthmux.multiplexing.evaluation import BenchResult, GroupedScore, benchmark, evaluate_grouped
from depthmux.multiplexing.model import MultiplexedClassifier, MuxConfig
from depthmux.multiplexing.teacher import train_probe
from depthmux.training.features import FeatureCache, build_feature_cache
from depthmux.training.mux import MuxTrainConfig, train_mux
from depthmux.utils.checkpoint import atomic_write_text
from depthmux.utils.seed import seed_everything

console = Console(stderr=True)


@dataclass
class ExperimentConfig:
    task: str = "tweets"
    data_dir: str | None = None
    model: str = "minilm"
    readout: str | None = None          # None: the model's own pooling (mean for MiniLM)
    ns: list[int] = field(default_factory=lambda: [2])
    prefill_layers: list[int] = field(default_factory=lambda: [0])
    mixers: list[str] = field(default_factory=lambda: ["reversible"])
    max_train: int | None = 8000        # subsample of the train split (None: all of it)
    max_validation: int = 1000          # model selection split (carved from train)
    max_length: int = 512               # the model limit; longer inputs are an error, never silently cut
    shuffles: int = 10                  # random groupings of the evaluation set (SPEC 1.4)
    bench: bool = True
    bench_samples: int = 512
    bench_batch_size: int = 64
    bench_repetitions: int = 5
    train: MuxTrainConfig = field(default_factory=MuxTrainConfig)
    out_dir: str = "runs/mux"
    resume: bool = False


#: The main job (``depthmux mux run`` / ``make run``): N = 2, l = 1 on the embedded tweets, sized to
#: finish within 15 minutes on a 2-core CPU, install included.
QUICKSTART = ExperimentConfig(task="tweets", ns=[2], prefill_layers=[1], max_train=5000, out_dir="runs/quickstart")


@dataclass
class ResultRow:
    n: int
    prefill_layers: int
    mixer: str
    accuracy: GroupedScore
    teacher_accuracy: float
    bench: BenchResult | None
    checkpoint: str | None
    best_epoch: int | None = None

    def as_dict(self) -> dict:
        d = asdict(self)
        d["delta_points"] = 100 * (self.accuracy.accuracy_mean - self.teacher_accuracy)
        return d


def _sample(data, k: int | None, seed: int):
    if k is None or k >= len(data):
        return data
    return data.subset(sorted(random.Random(seed).sample(range(len(data)), k)))


def _teacher(backbone: FrozenBackbone, train: FeatureCache, val: FeatureCache, cfg: ExperimentConfig,
             label_names: list[str], out: Path) -> MultiplexedClassifier:
    path = out / "teacher"
    if cfg.resume and path.is_dir():
        return MultiplexedClassifier.from_pretrained(path, backbone)
    head, info = train_probe(train.teacher, train.labels, val.teacher, val.labels, len(label_names), cfg.train.seed)
    teacher = MultiplexedClassifier(MuxConfig(n=1, backbone=backbone.name, readout=backbone.readout_mode,
                                              num_labels=len(label_names), task=cfg.task, label_names=label_names),
                                    backbone, head)
    teacher.save_pretrained(path, {"probe": info})
    console.print(f"teacher probe: L2={info['l2']}, validation accuracy {100 * info['val_accuracy']:.2f}")
    return teacher


def run_experiment(cfg: ExperimentConfig, progress: bool = True) -> list[ResultRow]:
    """Train/evaluate/benchmark every (N, l, mixer) of ``cfg`` next to the teacher (N = 1)."""
    require(cfg.shuffles >= 1, "--shuffles must be >= 1")
    seed_everything(cfg.train.seed)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    backbone = load_backbone(cfg.model, cfg.readout)
    for l in cfg.prefill_layers:
        backbone.check_prefill(l)
    for n in cfg.ns:
        for mixer in cfg.mixers:
            MuxConfig(n=n, mixer=mixer).validate(backbone)
    train_data = _sample(load_task(cfg.task, "train", cfg.data_dir), cfg.max_train, cfg.train.seed)
    val_data = _sample(load_task(cfg.task, "validation", cfg.data_dir), cfg.max_validation, cfg.train.seed)
    dev_data = load_task(cfg.task, "dev", cfg.data_dir)
    for note in dev_data.notes:
        console.print(f"[dim]note: {note}[/dim]")
    layers = sorted(set(cfg.prefill_layers))
    console.print(f"caching frozen {backbone.name} features for {len(train_data)} train / {len(val_data)} "
                  f"validation / {len(dev_data)} dev examples at layers {layers}")
    caches = {name: build_feature_cache(backbone, d, layers, max_length=cfg.max_length, desc=f"cache {name}")
              for name, d in (("train", train_data), ("validation", val_data), ("dev", dev_data))}
    teacher = _teacher(backbone, caches["train"], caches["validation"], cfg, dev_data.label_names, out)
    teacher_score = evaluate_grouped(teacher, caches["dev"], progress=progress)
    rows = [ResultRow(1, backbone.num_layers, "teacher", teacher_score, teacher_score.accuracy_mean, None,
                      str(out / "teacher"))]
    bench_texts = dev_data.texts[: cfg.bench_samples]
    for n in [n for n in cfg.ns if n > 1]:
        for l in cfg.prefill_layers:
            for mixer in cfg.mixers:
                mcfg = MuxConfig(n=n, prefill_layers=l, mixer=mixer, backbone=backbone.name,
                                 readout=backbone.readout_mode, num_labels=dev_data.num_labels, task=cfg.task,
                                 label_names=dev_data.label_names)
                run_dir = out / f"n{n}-l{l}-{mixer}"
                if cfg.resume and (run_dir / "best").is_dir():
                    model = MultiplexedClassifier.from_pretrained(run_dir / "best", backbone)
                    best_epoch = json.loads((run_dir / "best" / "state.json").read_text()).get("best_epoch")
                    console.print(f"N={n} l={l} {mixer}: reusing {run_dir / 'best'}")
                else:
                    seed_everything(cfg.train.seed)
                    model = MultiplexedClassifier(mcfg, backbone, teacher.head)
                    hist = train_mux(model, caches["train"], caches["validation"], cfg.train, run_dir,
                                     resume=cfg.resume and (run_dir / "last").is_dir(), progress=progress)
                    best_epoch = hist["best_epoch"]
                score = evaluate_grouped(model, caches["dev"], cfg.shuffles, progress=progress)
                bench = benchmark(teacher, model, bench_texts, cfg.bench_batch_size, cfg.bench_repetitions,
                                  progress=progress) if cfg.bench else None
                row = ResultRow(n, l, mixer, score, teacher_score.accuracy_mean, bench, str(run_dir / "best"), best_epoch)
                rows.append(row)
                console.print(_row_line(row))
                write_results(rows, cfg, out)
    write_results(rows, cfg, out)
    return rows


def _row_line(r: ResultRow) -> str:
    speed = f", speedup {r.bench.speedup:.2f}x (ceiling {r.bench.ceiling:.2f}x)" if r.bench else ""
    return (f"N={r.n} l={r.prefill_layers} {r.mixer}: accuracy {r.accuracy} "
            f"(teacher {100 * r.teacher_accuracy:.2f}){speed}")


def results_table(rows: list[ResultRow], task: str) -> Table:
    t = Table(title=f"RevMUX on {task}: teacher (N=1) vs multiplexed, dev accuracy over random groupings")
    for c in ("N", "l", "mixer", "accuracy % (mean ± std)", "Δ vs teacher", "speedup", "ceiling", "of ceiling"):
        t.add_column(c, justify="right")
    for r in rows:
        b = r.bench
        t.add_row(str(r.n), "-" if r.n == 1 else str(r.prefill_layers), r.mixer, str(r.accuracy),
                  "" if r.n == 1 else f"{100 * (r.accuracy.accuracy_mean - r.teacher_accuracy):+.2f}",
                  f"{b.speedup:.2f}x" if b else "1.00x" if r.n == 1 else "-",
                  f"{b.ceiling:.2f}x" if b else "-", f"{100 * b.fraction_of_ceiling:.0f}%" if b else "-")
    return t


def results_markdown(rows: list[ResultRow], cfg: ExperimentConfig) -> str:
    f1 = cfg.task == "mrpc"
    head = "| N | l | mixer | accuracy % (mean ± std) |" + (" F1 % |" if f1 else "") + \
           " Δ vs teacher | speedup (min-max) | ceiling | of ceiling |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        b = r.bench
        f1_cell = f" {100 * r.accuracy.f1_mean:.2f} ± {100 * r.accuracy.f1_std:.2f} |" if f1 else ""
        lines.append(
            f"| {r.n} | {'-' if r.n == 1 else r.prefill_layers} | {r.mixer} | {r.accuracy} |{f1_cell} "
            f"{'' if r.n == 1 else f'{100 * (r.accuracy.accuracy_mean - r.teacher_accuracy):+.2f}'} | "
            + (f"{b.speedup:.2f}x ({b.speedup_min:.2f}-{b.speedup_max:.2f}) | {b.ceiling:.2f}x | "
               f"{100 * b.fraction_of_ceiling:.0f}% |" if b else "1.00x | - | - |"))
    return "\n".join(lines) + "\n"


def write_results(rows: list[ResultRow], cfg: ExperimentConfig, out: Path) -> None:
    payload = {"config": asdict(cfg), "threads": torch.get_num_threads(), "rows": [r.as_dict() for r in rows]}
    atomic_write_text(out / "results.json", json.dumps(payload, indent=2))
    atomic_write_text(out / "results.md", results_markdown(rows, cfg))
    plot_results(rows, out / "results.png", cfg.task)


def plot_results(rows: list[ResultRow], path: Path, task: str) -> None:
    """Accuracy (mean ± std) against measured speedup, one point per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        x = r.bench.speedup if r.bench else 1.0
        ax.errorbar(x, 100 * r.accuracy.accuracy_mean, yerr=100 * r.accuracy.accuracy_std, fmt="o", capsize=3)
        ax.annotate("teacher" if r.n == 1 else f"N={r.n} l={r.prefill_layers} {r.mixer[:3]}", (x, 100 * r.accuracy.accuracy_mean),
                    fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("measured speedup vs teacher (x)")
    ax.set_ylabel("dev accuracy % (10 groupings)")
    ax.set_title(f"RevMUX on {task}, frozen backbone")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
