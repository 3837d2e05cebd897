"""The RevMUX recipes behind ``depthmux mux run / train / eval / bench`` (SPEC 1.2-1.5).

:func:`run_experiment` trains the teacher's probe, then adapters for a grid of (N, l, mixer);
evaluates each on the dev split over random groupings next to the teacher (N = 1) and benchmarks
its speed; every artifact goes to the run folder. :func:`evaluate_checkpoint` and
:func:`benchmark_checkpoint` re-evaluate or re-time a saved checkpoint. Each takes one config
dataclass whose ``validate()`` checks every setting before any work (one line, no traceback).

Layout of ``out_dir`` (a :class:`~depthmux.utils.run_folder.RunFolder`, locked while a run writes)::

    experiment.json          the settings; ``--resume`` refuses different ones (EXPERIMENT_KEYS)
    teacher/                 the frozen probe head (a TeacherClassifier checkpoint)
    n2-l0-reversible/        one run folder of ``train_mux`` (train_config.json, log.jsonl,
                             checkpoints/); its best/ is the MultiplexedClassifier that gets
                             evaluated and benchmarked (reload with from_pretrained)
    results.json / results.md / results.png
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from rich.console import Console

from depthmux.backbones import FrozenBackbone, load_backbone
from depthmux.data import ClassificationDataset, load_task, task_name
from depthmux.errors import DepthmuxError, require
from depthmux.multiplexing.evaluation import BenchResult, GroupedScore, benchmark, evaluate_grouped
from depthmux.multiplexing.features import FeatureCache, build_feature_cache
from depthmux.multiplexing.heads import LinearProbeHead
from depthmux.multiplexing.mixers import MIXERS
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
from depthmux.utils.checkpoint import read_json
from depthmux.utils.checks import check_int, check_seed
from depthmux.utils.run_folder import RunFolder
from depthmux.utils.seed import seed_everything

console = Console(stderr=True)


def _check_int_list(name: str, values, minimum: int) -> None:
    require(isinstance(values, list) and len(values) >= 1, f"{name} must list at least one value, got {values!r}")
    for v in values:
        check_int(name, v, minimum)


@dataclass
class ExperimentConfig:
    """``depthmux mux train`` / ``mux run``: the grid, the data, the training and the benchmark."""

    task: str = "tweets"
    data_dir: str | None = None
    model: str = "minilm"
    readout: str | None = None  # None: the model's own pooling (mean for MiniLM)
    ns: list[int] = field(default_factory=lambda: [2])
    prefill_layers: list[int] = field(default_factory=lambda: [0])
    mixers: list[str] = field(default_factory=lambda: ["reversible"])
    max_train: int | None = 8000  # subsample of the train split (None: all of it)
    max_validation: int = 1000  # model selection split (carved from train)
    max_length: int = 512  # the model limit; longer inputs are an error, never silently cut
    shuffles: int = 10  # random groupings of the evaluation set (SPEC 1.4)
    bench: bool = True
    bench_samples: int = 512
    bench_batch_size: int = 64
    bench_repetitions: int = 5
    train: MuxTrainConfig = field(default_factory=MuxTrainConfig)
    out_dir: str = "runs/mux"
    resume: bool = False

    def validate(self) -> ExperimentConfig:
        """One line for the first invalid setting (CLI option names); returns self."""
        task_name(self.task)
        require(self.readout in (None, "cls", "mean"), f"unknown readout {self.readout!r}: choose cls or mean")
        _check_int_list("--n", self.ns, 1)
        _check_int_list("--prefill-layers", self.prefill_layers, 0)
        require(isinstance(self.mixers, list) and len(self.mixers) >= 1, "--mixer must name at least one mixer")
        for m in self.mixers:
            require(m in MIXERS, f"unknown mixer {m!r}: choose one of {list(MIXERS)}")
        require(
            self.max_train is None or (isinstance(self.max_train, int) and self.max_train >= 1),
            f"--max-train must be >= 1 (or 0 for the whole train split), got {self.max_train!r}",
        )
        check_int("max validation examples", self.max_validation, 1)
        check_int("max length", self.max_length, 1)
        check_int("--shuffles", self.shuffles, 1)
        check_int("--bench-samples", self.bench_samples, 1)
        check_int("--bench-batch-size", self.bench_batch_size, 1)
        check_int("--repetitions", self.bench_repetitions, 1)
        require(isinstance(self.out_dir, str) and self.out_dir != "", "--out must be a folder path")
        self.train.validate()
        return self


#: Settings a resumed experiment must share with the stored ``experiment.json`` (they shape the
#: teacher and the adapters); evaluation and benchmark settings may change between runs.
EXPERIMENT_KEYS = (
    "task",
    "data_dir",
    "model",
    "readout",
    "ns",
    "prefill_layers",
    "mixers",
    "max_train",
    "max_validation",
    "max_length",
    "train.epochs",
    "train.batch_size",
    "train.lr",
    "train.weight_decay",
    "train.lambda_info",
    "train.tau",
    "train.seed",
)

#: The main job (``depthmux mux run`` / ``make run``): N = 2, l = 1 on the embedded tweets, sized to
#: finish within 15 minutes on a 2-core CPU, install included.
QUICKSTART = ExperimentConfig(task="tweets", ns=[2], prefill_layers=[1], max_train=5000, out_dir="runs/quickstart")


def quickstart_config(out_dir: str = QUICKSTART.out_dir) -> ExperimentConfig:
    """:data:`QUICKSTART` into ``out_dir``; a second ``mux run`` into the same folder resumes it (reusing
    the trained teacher and adapters) instead of refusing."""
    return replace(QUICKSTART, out_dir=out_dir, resume=holds_experiment(RunFolder(out_dir)))


def holds_experiment(run: RunFolder) -> bool:
    """Whether ``run`` already holds a mux experiment (its settings, teacher or results)."""
    return run.holds_run() or (run.root / "teacher").exists()


def _open_experiment(run: RunFolder, cfg: ExperimentConfig) -> None:
    """Under the lock: refuse a fresh run over an old one and a resume with other settings; clean
    what interrupted atomic saves left."""
    if cfg.resume:
        if not run.has_json("experiment"):
            raise DepthmuxError(f"--resume: {run.root} holds no mux experiment to resume (no experiment.json)")
        run.check_matches("experiment", asdict(cfg), EXPERIMENT_KEYS)
    elif holds_experiment(run):
        raise DepthmuxError(
            f"{run.root} already holds a mux experiment: continue it with --resume or choose a new --out"
        )
    run.clean_stale_tmp()


def _sample(data: ClassificationDataset, k: int | None, seed: int) -> ClassificationDataset:
    if k is None or k >= len(data):
        return data
    return data.subset(sorted(random.Random(seed).sample(range(len(data)), k)))


def _check_train_sample(train: ClassificationDataset, largest_n: int) -> None:
    """The probe must see every label, and a pass must be fillable with real inputs."""
    missing = [name for i, name in enumerate(train.label_names) if i not in set(train.labels)]
    require(
        not missing, f"the train sample ({len(train)} examples) has no example of label(s) {missing}: raise --max-train"
    )
    require(
        len(train) >= largest_n,
        f"the train sample has {len(train)} examples, fewer than N={largest_n}: raise --max-train",
    )


def _teacher(
    backbone: FrozenBackbone,
    train: FeatureCache,
    val: FeatureCache,
    cfg: ExperimentConfig,
    label_names: list[str],
    out: Path,
) -> TeacherClassifier:
    path = out / "teacher"
    if cfg.resume and path.is_dir():
        return TeacherClassifier.from_pretrained(path, backbone)
    head, info = train_probe(train.teacher, train.labels, val.teacher, val.labels, len(label_names), cfg.train.seed)
    teacher = TeacherClassifier(
        TeacherConfig(
            backbone=backbone.name, readout=backbone.readout_mode, task=task_name(cfg.task), label_names=label_names
        ),
        backbone,
        head,
    )
    teacher.save_pretrained(path, {"probe": info})
    console.print(f"teacher probe: L2={info['l2']}, validation accuracy {100 * info['val_accuracy']:.2f}")
    return teacher


def run_experiment(cfg: ExperimentConfig, progress: bool = True) -> list[ResultRow]:
    """Train/evaluate/benchmark every (N, l, mixer) of ``cfg`` next to the teacher (N = 1).

    Order of checks: the settings (``cfg.validate()``), then that ``out_dir`` is writable, free
    (lock) and, on ``resume``, was started with the same settings; then the backbone and the grid
    against it; only then the data and the feature cache.
    """
    cfg.validate()
    run = RunFolder(cfg.out_dir)
    run.check_writable()
    with run.lock():
        _open_experiment(run, cfg)
        return _run_grid(cfg, run, progress)


def _run_grid(cfg: ExperimentConfig, run: RunFolder, progress: bool) -> list[ResultRow]:
    out = run.root
    seed_everything(cfg.train.seed)
    backbone = load_backbone(cfg.model, cfg.readout)
    for l in cfg.prefill_layers:
        backbone.check_prefill(l)
    for n in [n for n in cfg.ns if n > 1]:
        for mixer in cfg.mixers:
            MuxConfig(n=n, mixer=mixer, readout=backbone.readout_mode).validate(backbone)
    run.write_json("experiment", asdict(cfg))  # the grid fits the backbone: from here on, work is kept
    train_data = _sample(load_task(cfg.task, "train", cfg.data_dir), cfg.max_train, cfg.train.seed)
    val_data = _sample(load_task(cfg.task, "validation", cfg.data_dir), cfg.max_validation, cfg.train.seed)
    dev_data = load_task(cfg.task, "dev", cfg.data_dir)
    _check_train_sample(train_data, max(cfg.ns))
    for note in dev_data.notes:
        console.print(f"[dim]note: {note}[/dim]")
    layers = sorted(set(cfg.prefill_layers))
    console.print(
        f"caching frozen {backbone.name} features for {len(train_data)} train / {len(val_data)} "
        f"validation / {len(dev_data)} dev examples at layers {layers}"
    )
    caches = {
        name: build_feature_cache(backbone, d, layers, max_length=cfg.max_length, desc=f"cache {name}")
        for name, d in (("train", train_data), ("validation", val_data), ("dev", dev_data))
    }
    teacher = _teacher(backbone, caches["train"], caches["validation"], cfg, dev_data.label_names, out)
    teacher_score = evaluate_grouped(teacher, caches["dev"], progress=progress)
    rows = [
        ResultRow(
            1, backbone.num_layers, "teacher", teacher_score, teacher_score.accuracy_mean, None, str(out / "teacher")
        )
    ]
    bench_texts = dev_data.texts[: cfg.bench_samples]
    for n in [n for n in cfg.ns if n > 1]:
        for l in cfg.prefill_layers:
            for mixer in cfg.mixers:
                run_dir = out / f"n{n}-l{l}-{mixer}"
                if cfg.resume and (run_dir / "best").is_dir():
                    model = MultiplexedClassifier.from_pretrained(run_dir / "best", backbone)
                    best_epoch = read_json(run_dir / "best" / "state.json", str(run_dir / "best")).get("best_epoch")
                    console.print(f"N={n} l={l} {mixer}: reusing {run_dir / 'best'}")
                else:
                    seed_everything(cfg.train.seed)
                    mcfg = MuxConfig(n=n, prefill_layers=l, mixer=mixer, **asdict(teacher.config))
                    model = MultiplexedClassifier(mcfg, backbone, teacher.head)
                    hist = train_mux(
                        model,
                        caches["train"],
                        caches["validation"],
                        cfg.train,
                        run_dir,
                        resume=cfg.resume and RunFolder(run_dir).holds_run(),
                        progress=progress,
                    )
                    best_epoch = hist["best_epoch"]
                score = evaluate_grouped(model, caches["dev"], cfg.shuffles, progress=progress)
                bench = (
                    benchmark(
                        teacher, model, bench_texts, cfg.bench_batch_size, cfg.bench_repetitions, progress=progress
                    )
                    if cfg.bench
                    else None
                )
                row = ResultRow(
                    n, l, mixer, score, teacher_score.accuracy_mean, bench, str(run_dir / "best"), best_epoch
                )
                rows.append(row)
                console.print(row_line(row))
                write_results(rows, asdict(cfg), cfg.task, out)
    write_results(rows, asdict(cfg), cfg.task, out)
    return rows


@dataclass
class MuxEvalConfig:
    """``depthmux mux eval``: a trained checkpoint on a task split, with its teacher beside it."""

    checkpoint: str
    task: str | None = None  # None: the checkpoint's own task
    data_dir: str | None = None
    split: str = "dev"
    shuffles: int = 10
    seed: int = 0

    def validate(self) -> MuxEvalConfig:
        if self.task is not None:
            task_name(self.task)
        require(self.split in ("dev", "validation"), f"--split must be dev or validation, got {self.split!r}")
        check_int("--shuffles", self.shuffles, 1)
        check_seed("--seed", self.seed)
        return self


@dataclass
class MuxEvalReport:
    config: dict  # the checkpoint's config as a dict
    task: str
    split: str
    examples: int
    teacher: GroupedScore
    mux: GroupedScore | None  # None when the checkpoint is the teacher itself

    def as_dict(self) -> dict:
        return {
            "config": self.config,
            "task": self.task,
            "split": self.split,
            "examples": self.examples,
            "teacher": self.teacher.as_dict(),
            "mux": self.mux.as_dict() if self.mux else None,
        }


def evaluate_checkpoint(cfg: MuxEvalConfig, progress: bool = True) -> MuxEvalReport:
    """Accuracy (and F1) of a checkpoint over ``cfg.shuffles`` random groupings, and its teacher's."""
    cfg.validate()
    model = load_classifier(cfg.checkpoint)
    data = load_task(cfg.task or model.config.task or "tweets", cfg.split, cfg.data_dir)
    cache = build_feature_cache(model.body, data, model.cache_layers)
    if isinstance(model, TeacherClassifier):
        return MuxEvalReport(
            asdict(model.config),
            data.name,
            cfg.split,
            len(data),
            evaluate_grouped(model, cache, progress=progress),
            None,
        )
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

    def validate(self) -> MuxBenchConfig:
        task_name(self.task)
        check_int("--n", self.n, 2)
        check_int("--prefill-layers", self.prefill_layers, 0)
        require(self.mixer in MIXERS, f"unknown mixer {self.mixer!r}: choose one of {list(MIXERS)}")
        check_int("--samples", self.samples, 1)
        check_int("--batch-size", self.batch_size, 1)
        check_int("--repetitions", self.repetitions, 1)
        return self


def benchmark_checkpoint(cfg: MuxBenchConfig, progress: bool = True) -> BenchResult:
    """Time the teacher path and the multiplexed path on the first ``cfg.samples`` dev inputs."""
    cfg.validate()
    if cfg.checkpoint is not None:
        mux = MultiplexedClassifier.from_pretrained(cfg.checkpoint)
    else:
        backbone = load_backbone(cfg.model)
        mux = MultiplexedClassifier(
            MuxConfig(
                n=cfg.n,
                prefill_layers=cfg.prefill_layers,
                mixer=cfg.mixer,
                backbone=backbone.name,
                readout=backbone.readout_mode,
            ),
            backbone,
            LinearProbeHead(backbone.hidden_size, 2),
        )
    texts = load_task(cfg.task, "dev", cfg.data_dir).texts[: cfg.samples]
    return benchmark(mux.teacher(), mux, texts, cfg.batch_size, cfg.repetitions, progress=progress)
