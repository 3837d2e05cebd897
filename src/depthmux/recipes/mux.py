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

from rich.console import Console

from depthmux.backbones import FrozenBackbone, load_backbone
from depthmux.data import load_task
from depthmux.errors import require
from depthmux.multiplexing.evaluation import BenchResult, GroupedScore, benchmark, evaluate_grouped
from depthmux.multiplexing.features import FeatureCache, build_feature_cache
from depthmux.multiplexing.heads import LinearProbeHead
from depthmux.multiplexing.model import (
    MultiplexedClassifier,
    MuxConfig,
    TeacherClassifier,
    TeacherConfig,
    load_classifier,
)
from depthmux.multiplexing.teacher import train_probe
from depthmux.recipes.reports import ResultRow, row_line, write_results
from depthmux.training.mux import MuxTrainConfig, train_mux
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


def _sample(data, k: int | None, seed: int):
    if k is None or k >= len(data):
        return data
    return data.subset(sorted(random.Random(seed).sample(range(len(data)), k)))


def _teacher(backbone: FrozenBackbone, train: FeatureCache, val: FeatureCache, cfg: ExperimentConfig,
             label_names: list[str], out: Path) -> TeacherClassifier:
    path = out / "teacher"
    if cfg.resume and path.is_dir():
        return TeacherClassifier.from_pretrained(path, backbone)
    head, info = train_probe(train.teacher, train.labels, val.teacher, val.labels, len(label_names), cfg.train.seed)
    teacher = TeacherClassifier(TeacherConfig(backbone=backbone.name, readout=backbone.readout_mode, task=cfg.task,
                                              label_names=label_names), backbone, head)
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
            if n > 1:
                MuxConfig(n=n, mixer=mixer, readout=backbone.readout_mode).validate(backbone)
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
                mcfg = MuxConfig(n=n, prefill_layers=l, mixer=mixer, **asdict(teacher.config))
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
                console.print(row_line(row))
                write_results(rows, asdict(cfg), cfg.task, out)
    write_results(rows, asdict(cfg), cfg.task, out)
    return rows


@dataclass
class MuxEvalConfig:
    """``depthmux mux eval``: a trained checkpoint on a task split, with its teacher beside it."""

    checkpoint: str
    task: str | None = None             # None: the checkpoint's own task
    data_dir: str | None = None
    split: str = "dev"
    shuffles: int = 10
    seed: int = 0


@dataclass
class MuxEvalReport:
    config: dict                        # the checkpoint's MuxConfig as a dict
    task: str
    split: str
    examples: int
    teacher: GroupedScore
    mux: GroupedScore | None            # None when the checkpoint is the teacher itself

    def as_dict(self) -> dict:
        return {"config": self.config, "task": self.task, "split": self.split, "examples": self.examples,
                "teacher": self.teacher.as_dict(), "mux": self.mux.as_dict() if self.mux else None}


def evaluate_checkpoint(cfg: MuxEvalConfig, progress: bool = True) -> MuxEvalReport:
    """Accuracy (and F1) of a checkpoint over ``cfg.shuffles`` random groupings, and its teacher's."""
    model = load_classifier(cfg.checkpoint)
    data = load_task(cfg.task or model.config.task or "tweets", cfg.split, cfg.data_dir)
    cache = build_feature_cache(model.body, data, model.cache_layers)
    if isinstance(model, TeacherClassifier):
        return MuxEvalReport(asdict(model.config), data.name, cfg.split, len(data),
                             evaluate_grouped(model, cache, progress=progress), None)
    teacher = evaluate_grouped(model.teacher(), cache, progress=progress)
    mux = evaluate_grouped(model, cache, cfg.shuffles, cfg.seed, progress=progress)
    return MuxEvalReport(asdict(model.config), data.name, cfg.split, len(data), teacher, mux)


@dataclass
class MuxBenchConfig:
    """``depthmux mux bench``: teacher vs multiplexed samples/s (SPEC 1.5). Without a checkpoint the
    adapters are randomly initialised (speed does not depend on their values)."""

    checkpoint: str | None = None
    model: str = "minilm"
    n: int = 2
    prefill_layers: int = 0
    mixer: str = "reversible"
    task: str = "tweets"
    data_dir: str | None = None
    samples: int = 512
    batch_size: int = 64
    repetitions: int = 5


def benchmark_checkpoint(cfg: MuxBenchConfig, progress: bool = True) -> BenchResult:
    """Time the teacher path and the multiplexed path on the first ``cfg.samples`` dev inputs."""
    if cfg.checkpoint is not None:
        mux = MultiplexedClassifier.from_pretrained(cfg.checkpoint)
    else:
        backbone = load_backbone(cfg.model)
        mux = MultiplexedClassifier(MuxConfig(n=cfg.n, prefill_layers=cfg.prefill_layers, mixer=cfg.mixer,
                                              backbone=backbone.name, readout=backbone.readout_mode), backbone,
                                    LinearProbeHead(backbone.hidden_size, 2))
    texts = load_task(cfg.task, "dev", cfg.data_dir).texts[: cfg.samples]
    return benchmark(mux.teacher(), mux, texts, cfg.batch_size, cfg.repetitions, progress=progress)
