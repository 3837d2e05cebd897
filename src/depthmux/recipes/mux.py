"""The RevMUX recipes behind ``depthmux mux run / train / eval / bench`` (SPEC 1.2-1.5).

:func:`run_experiment` trains the teacher (a probe, or a fine-tuned backbone and head), then
adapters for a grid of (N, l, mixer); evaluates each on the dev split over random groupings next
to the teacher (N = 1) and benchmarks its speed; every artifact goes to the run folder. :func:`evaluate_checkpoint` and
:func:`benchmark_checkpoint` re-evaluate or re-time a saved checkpoint. Each takes one config
dataclass whose ``validate()`` checks every setting before any work (one line, no traceback).

Layout of ``out_dir`` (a :class:`~depthmux.utils.run_folder.RunFolder`, locked while a run writes)::

    experiment.json          the settings; ``--resume`` refuses different ones (EXPERIMENT_KEYS)
    teacher/                 the frozen teacher (a TeacherClassifier checkpoint: its probe head, or
                             with ``--teacher finetune`` the fine-tuned head)
    teacher-backbone/        ``--teacher finetune`` only: the fine-tuned backbone (a Hugging Face
                             folder; every checkpoint of the run names it as its backbone)
    n2-l0-reversible/        one run folder of ``train_mux`` (train_config.json, log.jsonl,
                             checkpoints/); its best/ is the MultiplexedClassifier that gets
                             evaluated and benchmarked (reload with from_pretrained)
    results.json / results.md / results.png

The parts of the experiment (:func:`load_splits`, :func:`prepare_task`, :func:`run_cell`) are public:
the sweeps of :mod:`depthmux.recipes.mux_sweeps` are made of them, so there is one experiment loop.

Length: the one RevMUX job: its config, the parts that the sweeps reuse and the checkpoint
re-evaluation share the config types, the data loading and the teacher; split up, each piece would
import the others.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from rich.console import Console

from depthmux.backbones import FrozenBackbone, load_backbone
from depthmux.data import (
    TASK_NAMES,
    ClassificationDataset,
    UserDataSpec,
    load_task,
    load_user_file,
    load_user_splits,
    task_label_names,
    task_name,
)
from depthmux.data.user_files import DEFAULT_VAL_FRACTION, check_data_file, read_texts
from depthmux.errors import DepthmuxError, require
from depthmux.multiplexing.evaluation import BenchResult, GroupedScore, benchmark, evaluate_grouped
from depthmux.multiplexing.features import FeatureCache, build_feature_cache
from depthmux.multiplexing.heads import LinearProbeHead, TaskHead, VerbalizerHead, task_verbalization
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
from depthmux.training.finetune import FinetuneConfig, finetune_teacher, save_finetuned_backbone
from depthmux.training.mux import MuxTrainConfig, train_mux
from depthmux.utils.checkpoint import read_json
from depthmux.utils.checks import check_device, check_float, check_int, check_seed
from depthmux.utils.run_folder import RunFolder
from depthmux.utils.seed import seed_everything

console = Console(stderr=True)


def _check_int_list(name: str, values, minimum: int) -> None:
    require(isinstance(values, list) and len(values) >= 1, f"{name} must list at least one value, got {values!r}")
    for v in values:
        check_int(name, v, minimum)
    _check_no_repeats(name, values)


def _check_no_repeats(name: str, values: list) -> None:
    """A grid axis naming a value twice would train the same cell into the same folder twice."""
    repeated = sorted({v for v in values if values.count(v) > 1}, key=str)
    require(not repeated, f"{name} repeats {', '.join(map(str, repeated))}: give each value once")


@dataclass
class ExperimentConfig:
    """``depthmux mux train`` / ``mux run``: the grid, the data, the teacher, the training and the benchmark.

    The data is a built-in ``task`` or the user's own files (``train_file`` and ``dev_file``, with
    ``text_columns`` and ``label_column``; see :mod:`depthmux.data.user_files`), which then name the
    data set (the train file's stem) in checkpoints, tables and ``results.json``.
    """

    task: str = "tweets"
    data_dir: str | None = None
    train_file: str | None = None  # the user's own data (then `task` is not used)
    dev_file: str | None = None  # the reported split of the user's data
    val_file: str | None = None  # model selection; None: a seeded `val_split` share of train
    text_columns: list[str] | None = None  # user data: one column, or two for pairs (None: ["text"])
    label_column: str | None = None  # user data (None: "label")
    val_split: float | None = None  # share of train held out for validation (None: 10%; tweets: fixed 80/10/10)
    teacher: str = "probe"  # probe: a linear probe on the frozen backbone; finetune: backbone + head tuned first
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
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
    bench_threads: int | None = None  # torch CPU threads while timing (None: the process's setting)
    train: MuxTrainConfig = field(default_factory=MuxTrainConfig)
    out_dir: str = "runs/mux"
    resume: bool = False
    device: str = "cpu"  # where the backbone, caches and adapters live ("cuda" on a GPU machine)

    def user_data(self) -> UserDataSpec | None:
        """The user's files as a :class:`UserDataSpec` (None for a built-in task)."""
        if self.train_file is None and self.dev_file is None and self.val_file is None:
            return None
        require(
            self.train_file is not None and self.dev_file is not None,
            "give both --train FILE and --dev FILE (the reported split); --val FILE is optional",
        )
        return UserDataSpec(
            self.train_file,
            self.dev_file,
            self.text_columns if self.text_columns is not None else ["text"],
            self.label_column if self.label_column is not None else "label",
            self.val_file,
            self.val_split if self.val_split is not None else DEFAULT_VAL_FRACTION,
        )

    @property
    def dataset(self) -> str:
        """The data set's name: the user's train-file stem or the built-in task."""
        spec = self.user_data()
        return spec.name if spec is not None else task_name(self.task)

    def validate(self) -> ExperimentConfig:
        """One line for the first invalid setting (CLI option names); returns self."""
        spec = self.user_data()
        if spec is not None:
            require(
                self.task == "tweets",
                f"give --task {self.task} or --train/--dev files, not both (the files would replace the task)",
            )
            spec.validate()
        else:
            task_name(self.task)
            require(
                self.text_columns is None and self.label_column is None,
                "--text-column and --label-column name the columns of --train/--dev files; the built-in tasks "
                "know their own",
            )
            if self.val_split is not None:
                check_float("--val-split", self.val_split, 0.0, 1.0, low_open=True, high_open=True)
        require(self.teacher in TEACHERS, f"unknown teacher {self.teacher!r}: choose one of {list(TEACHERS)}")
        if self.teacher == "finetune":
            self.finetune.validate()
        require(self.readout in (None, "cls", "mean"), f"unknown readout {self.readout!r}: choose cls or mean")
        _check_int_list("--n", self.ns, 1)
        _check_int_list("--prefill-layers", self.prefill_layers, 0)
        require(isinstance(self.mixers, list) and len(self.mixers) >= 1, "--mixer must name at least one mixer")
        for m in self.mixers:
            require(m in MIXERS, f"unknown mixer {m!r}: choose one of {list(MIXERS)}")
        _check_no_repeats("--mixer", self.mixers)
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
        check_int("benchmark threads", self.bench_threads, 1, allow_none=True)
        require(isinstance(self.out_dir, str) and self.out_dir != "", "--out must be a folder path")
        check_device("--device", self.device)
        self.train.validate()
        return self


#: ``--teacher``: where the frozen head and the N = 1 baseline come from (SPEC 1.2).
TEACHERS = {
    "probe": "a linear probe trained on the frozen backbone's read-outs",
    "finetune": "the backbone and a linear head fine-tuned on the task first, then frozen",
    "verbalizer": "the frozen LM head restricted to one label word per class, after the task's prompt "
    "(decoder-only and encoder-decoder models; nothing trained)",
}

#: Settings a resumed experiment must share with the stored ``experiment.json`` (they shape the
#: teacher and the adapters); evaluation and benchmark settings may change between runs. A key the
#: stored file lacks (a run from an older version) is not compared.
EXPERIMENT_KEYS = (
    "task",
    "data_dir",
    "train_file",
    "dev_file",
    "val_file",
    "text_columns",
    "label_column",
    "val_split",
    "teacher",
    "finetune.epochs",
    "finetune.batch_size",
    "finetune.lr",
    "finetune.head_lr",
    "finetune.weight_decay",
    "finetune.seed",
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
    "train.patience",
    "train.min_steps",
)

#: The training recipe of ``mux train`` and ``mux sweep`` unless told otherwise, made for small data too:
#: at least ``min_steps`` optimizer steps (more epochs on a few hundred examples, at most 50; from about
#: 6400 examples at batch 32 the 3 epochs already take more) and early stopping after ``patience``
#: epochs without a better validation accuracy.
SMALL_DATA_RECIPE = {"min_steps": 600, "patience": 3}
#: ``--epochs`` when not given (then :data:`SMALL_DATA_RECIPE`'s ``min_steps`` may raise it; an explicit
#: ``--epochs`` is trained as given unless ``--min-steps`` is given too).
DEFAULT_EPOCHS = MuxTrainConfig().epochs

#: The main job (``depthmux mux run`` / ``make run``): N = 2, l = 1 on the embedded tweets, sized to
#: finish within 15 minutes on a 2-core CPU, install included. Its speed is timed on one thread over 10
#: repetitions: on the shared 2-core machine, two threads that other work preempts made the per-repetition
#: speedups spread 0.64-9.21x (median 1.15x, load 16.8; three runs 1.15-1.21x); one thread and 10
#: repetitions gave 1.77x and 1.61x under load 8.5-16 (ceiling 1.71x; the spread stays wide under such
#: load, and the line says so).
QUICKSTART = ExperimentConfig(
    task="tweets",
    ns=[2],
    prefill_layers=[1],
    max_train=5000,
    bench_repetitions=10,
    bench_threads=1,
    out_dir="runs/quickstart",
)


def quickstart_config(out_dir: str = QUICKSTART.out_dir) -> ExperimentConfig:
    """:data:`QUICKSTART` into ``out_dir``; a second ``mux run`` into the same folder resumes it (reusing
    the trained teacher and adapters) instead of refusing."""
    return replace(QUICKSTART, out_dir=out_dir, resume=holds_experiment(RunFolder(out_dir)))


def holds_experiment(run: RunFolder) -> bool:
    """Whether ``run`` already holds a mux experiment (its settings, teacher or results)."""
    return run.holds_run() or (run.root / "teacher").exists()


def stored_keys(run: RunFolder, name: str, keys) -> list[str]:
    """The dotted ``keys`` that ``<name>.json`` in ``run`` records (older runs lack newer settings)."""
    stored = run.read_json(name)

    def has(key: str) -> bool:
        obj = stored
        for part in key.split("."):
            if not isinstance(obj, dict) or part not in obj:
                return False
            obj = obj[part]
        return True

    return [k for k in keys if has(k)]


def _open_experiment(run: RunFolder, cfg: ExperimentConfig) -> None:
    """Under the lock: refuse a fresh run over an old one and a resume with other settings; clean
    what interrupted atomic saves left."""
    if cfg.resume:
        if not run.has_json("experiment"):
            raise DepthmuxError(f"--resume: {run.root} holds no mux experiment to resume (no experiment.json)")
        run.check_matches("experiment", asdict(cfg), stored_keys(run, "experiment", EXPERIMENT_KEYS))
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


def load_splits(cfg: ExperimentConfig) -> dict[str, ClassificationDataset]:
    """``{"train", "validation", "dev"}`` of the experiment's data: train sub-sampled to ``max_train`` and
    validation to ``max_validation`` (seeded by the training seed); dev whole (it is reported)."""
    spec = cfg.user_data()
    if spec is not None:
        splits = load_user_splits(spec)
    else:
        splits = {s: load_task(cfg.task, s, cfg.data_dir, cfg.val_split) for s in ("train", "validation", "dev")}
    splits["train"] = _sample(splits["train"], cfg.max_train, cfg.train.seed)
    splits["validation"] = _sample(splits["validation"], cfg.max_validation, cfg.train.seed)
    return splits


@dataclass
class PreparedTask:
    """What every cell of an experiment or sweep on one data set shares: the frozen backbone (fine-tuned
    first for ``--teacher finetune``), the frozen teacher and its dev score, the feature caches at every
    prefill depth (computed once), the data."""

    backbone: FrozenBackbone
    teacher: TeacherClassifier
    teacher_score: GroupedScore
    caches: dict[str, FeatureCache]
    data: dict[str, ClassificationDataset]
    teacher_kind: str
    dataset: str

    def teacher_row(self, out: Path) -> ResultRow:
        s = self.teacher_score
        return ResultRow(
            1,
            self.backbone.num_layers,
            "teacher",
            s,
            s.accuracy_mean,
            None,
            str(out / "teacher"),
            teacher=self.teacher_kind,
            dataset=self.dataset,
            train_examples=len(self.data["train"]),
        )


def _finetuned_backbone(
    backbone: FrozenBackbone, data: dict, cfg: ExperimentConfig, out: Path, progress: bool
) -> tuple[FrozenBackbone, LinearProbeHead | None, dict | None]:
    """``--teacher finetune``: tune the backbone and a head on the task, save the backbone to
    ``out/teacher-backbone`` and reload it from there (so checkpoints name that folder). A resumed run
    whose teacher is saved reuses the folder (the head comes from ``teacher/``)."""
    folder = out / "teacher-backbone"
    if cfg.resume and folder.is_dir() and (out / "teacher").is_dir():
        return load_backbone(str(folder), backbone.readout_mode, device=cfg.device), None, None
    console.print(f"fine-tuning the teacher ({backbone.name}) on {len(data['train'])} {cfg.dataset} examples")
    head, info = finetune_teacher(backbone, data["train"], data["validation"], cfg.finetune, cfg.max_length, progress)
    save_finetuned_backbone(backbone, folder)
    return load_backbone(str(folder), backbone.readout_mode, device=cfg.device), head, info


def _teacher(
    backbone: FrozenBackbone,
    caches: dict[str, FeatureCache],
    cfg: ExperimentConfig,
    label_names: list[str],
    out: Path,
    head: TaskHead | None,
    info: dict | None,
) -> TeacherClassifier:
    """The frozen teacher: reloaded on resume, else the fine-tuned head (``head``) or a probe trained here."""
    path = out / "teacher"
    if cfg.resume and path.is_dir():
        return TeacherClassifier.from_pretrained(path, backbone)
    if head is None:
        train, val = caches["train"], caches["validation"]
        head, info = train_probe(train.teacher, train.labels, val.teacher, val.labels, len(label_names), cfg.train.seed)
        console.print(f"teacher probe: L2={info['l2']}, validation accuracy {100 * info['val_accuracy']:.2f}")
    elif cfg.teacher == "verbalizer":
        console.print(f"verbalizer teacher: label words {info['label_words']} after the prompt {info['prompt']!r}")
    else:
        console.print(
            f"fine-tuned teacher: best epoch {info['best_epoch']}, validation accuracy {100 * info['val_accuracy']:.2f}"
        )
    teacher = TeacherClassifier(
        TeacherConfig(
            backbone=backbone.name,
            readout=backbone.readout_mode,
            task=cfg.dataset,
            label_names=label_names,
            prompt=backbone.prompt,
        ),
        backbone,
        head,
    )
    teacher.save_pretrained(path, {cfg.teacher: info})
    return teacher


def check_grid(backbone: FrozenBackbone, ns: list[int], prefill_layers: list[int], mixers: list[str]) -> None:
    """Every (N, l, mixer) fits the backbone (l below its depth, N dividing its width): one line if not."""
    for l in prefill_layers:
        backbone.check_prefill(l)
    for n in [n for n in ns if n > 1]:
        for mixer in mixers:
            MuxConfig(n=n, mixer=mixer, readout=backbone.readout_mode).validate(backbone)


def prepare_task(
    cfg: ExperimentConfig,
    backbone: FrozenBackbone,
    out: Path,
    layers: list[int],
    progress: bool = True,
    data: dict[str, ClassificationDataset] | None = None,
) -> PreparedTask:
    """Load the data (unless given, from :func:`load_splits`), fine-tune the teacher if asked, cache the
    frozen features at ``layers`` and train (or, on resume, reload) the teacher in ``out/teacher``;
    score it on dev."""
    data = data if data is not None else load_splits(cfg)
    _check_train_sample(data["train"], max(cfg.ns))
    for note in data["dev"].notes:
        console.print(f"[dim]note: {note}[/dim]")
    head = info = None
    if cfg.teacher == "finetune":
        backbone, head, info = _finetuned_backbone(backbone, data, cfg, out, progress)
    if cfg.teacher == "verbalizer":  # the prompt goes on the backbone before anything is tokenised
        dev = data["dev"]
        words = task_verbalization(cfg.dataset, dev.label_names, isinstance(dev.texts[0], tuple))
        backbone.prompt = words.prompt
        head = VerbalizerHead.from_backbone(backbone, words.label_words)
        info = {"label_words": list(words.label_words), "prompt": words.prompt}
    layers = sorted(set(layers))
    console.print(
        f"caching frozen {backbone.name} features for {len(data['train'])} train / {len(data['validation'])} "
        f"validation / {len(data['dev'])} dev examples at layers {layers}"
    )
    caches = {
        name: build_feature_cache(backbone, d, layers, max_length=cfg.max_length, desc=f"cache {name}")
        for name, d in data.items()
    }
    teacher = _teacher(backbone, caches, cfg, data["dev"].label_names, out, head, info)
    score = evaluate_grouped(teacher, caches["dev"], progress=progress)
    return PreparedTask(backbone, teacher, score, caches, data, cfg.teacher, cfg.dataset)


def run_cell(
    prep: PreparedTask,
    cfg: ExperimentConfig,
    n: int,
    l: int,
    mixer: str,
    run_dir: Path,
    progress: bool = True,
    bench: BenchResult | None = None,
) -> ResultRow:
    """Train (or reuse, on resume) the adapters of one (N, l, mixer) with ``cfg.train`` in ``run_dir``;
    evaluate them on dev over ``cfg.shuffles`` groupings; benchmark them unless ``bench`` is given or
    ``cfg.bench`` is off."""
    if cfg.resume and (run_dir / "best").is_dir():
        model = MultiplexedClassifier.from_pretrained(run_dir / "best", prep.backbone)
        best_epoch = read_json(run_dir / "best" / "state.json", str(run_dir / "best")).get("best_epoch")
        console.print(f"N={n} l={l} {mixer}: reusing {run_dir / 'best'}")
    else:
        seed_everything(cfg.train.seed)
        mcfg = MuxConfig(n=n, prefill_layers=l, mixer=mixer, **asdict(prep.teacher.config))
        model = MultiplexedClassifier(mcfg, prep.backbone, prep.teacher.head)
        hist = train_mux(
            model,
            prep.caches["train"],
            prep.caches["validation"],
            cfg.train,
            run_dir,
            resume=cfg.resume and RunFolder(run_dir).holds_run(),
            progress=progress,
        )
        best_epoch = hist["best_epoch"]
    score = evaluate_grouped(model, prep.caches["dev"], cfg.shuffles, progress=progress)
    if bench is None and cfg.bench:
        texts = prep.data["dev"].texts[: cfg.bench_samples]
        bench = benchmark(
            prep.teacher, model, texts, cfg.bench_batch_size, cfg.bench_repetitions, progress, cfg.bench_threads
        )
    return ResultRow(
        n,
        l,
        mixer,
        score,
        prep.teacher_score.accuracy_mean,
        bench,
        str(run_dir / "best"),
        best_epoch,
        teacher=prep.teacher_kind,
        dataset=prep.dataset,
        lambda_info=cfg.train.lambda_info,
        seed=cfg.train.seed,
        train_examples=len(prep.data["train"]),
    )


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
    backbone = load_backbone(cfg.model, cfg.readout, device=cfg.device)
    check_grid(backbone, cfg.ns, cfg.prefill_layers, cfg.mixers)
    if cfg.teacher == "verbalizer":
        backbone.output_embeddings()  # an encoder has no LM head: one line before any work
    data = load_splits(cfg)
    _check_train_sample(data["train"], max(cfg.ns))
    run.write_json("experiment", asdict(cfg))  # the grid and the data are good: from here on, work is kept
    prep = prepare_task(cfg, backbone, out, cfg.prefill_layers, progress, data)
    label_names = prep.data["dev"].label_names
    rows = [prep.teacher_row(out)]
    for n in [n for n in cfg.ns if n > 1]:
        for l in cfg.prefill_layers:
            for mixer in cfg.mixers:
                row = run_cell(prep, cfg, n, l, mixer, out / f"n{n}-l{l}-{mixer}", progress)
                rows.append(row)
                console.print(row_line(row))
                write_results(rows, asdict(cfg), cfg.dataset, out, label_names)
    write_results(rows, asdict(cfg), cfg.dataset, out, label_names)
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
    dev_file: str | None = None  # the user's own labelled file (instead of a task split)
    text_columns: list[str] | None = None  # its text column(s) (None: ["text"])
    label_column: str | None = None  # its label column (None: "label")
    device: str = "cpu"

    def validate(self) -> MuxEvalConfig:
        if self.dev_file is not None:
            require(self.task is None, "give --task or --dev FILE, not both")
            require(self.split == "dev", "--split chooses a task's split; a --dev FILE is evaluated whole")
            check_data_file(self.dev_file, "--dev")
        else:
            require(
                self.text_columns is None and self.label_column is None,
                "--text-column and --label-column name the columns of a --dev FILE",
            )
        if self.task is not None:
            task_name(self.task)
        require(self.split in ("dev", "validation"), f"--split must be dev or validation, got {self.split!r}")
        check_int("--shuffles", self.shuffles, 1)
        check_seed("--seed", self.seed)
        check_device("--device", self.device)
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


def _check_task_labels(checkpoint: str, label_names: list[str], task: str) -> None:
    """A checkpoint is scored on a task only if its labels are the task's, in order (by name as
    :func:`load_task` gives them, or as the task's files write them): else its predictions mean
    something else, and the accuracy would be meaningless."""
    names = task_label_names(task)
    require(
        list(label_names) in names,
        f"{checkpoint} predicts the labels {list(label_names)}, but {task_name(task)} has the labels {names[0]}: "
        "evaluate it on data with its own labels (--dev FILE)",
    )


def evaluate_checkpoint(cfg: MuxEvalConfig, progress: bool = True) -> MuxEvalReport:
    """Accuracy (and F1) of a checkpoint over ``cfg.shuffles`` random groupings, and its teacher's."""
    cfg.validate()
    model = load_classifier(cfg.checkpoint).place(cfg.device)
    if cfg.dev_file is not None:
        data = load_user_file(
            cfg.dev_file,
            cfg.text_columns if cfg.text_columns is not None else ["text"],
            cfg.label_column if cfg.label_column is not None else "label",
            model.config.label_names,
        )
    else:
        task = cfg.task or model.config.task or "tweets"
        require(
            cfg.task is not None or task in TASK_NAMES,
            f"{cfg.checkpoint} was trained on the user's data set {task!r}: evaluate it with --dev FILE "
            "(and its --text-column/--label-column)",
        )
        if task_name(task) != model.config.task:  # another task than the checkpoint's own
            _check_task_labels(cfg.checkpoint, model.config.label_names, task)
        data = load_task(task, cfg.split, cfg.data_dir)
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
    texts_file: str | None = None  # time the user's own texts (a data file) instead of a task's dev split
    text_columns: list[str] | None = None  # their column(s) (None: ["text"])
    device: str = "cpu"

    def validate(self) -> MuxBenchConfig:
        task_name(self.task)
        if self.texts_file is not None:
            check_data_file(self.texts_file, "--dev")
        else:
            require(self.text_columns is None, "--text-column names the column(s) of a --dev FILE")
        check_int("--n", self.n, 2)
        check_int("--prefill-layers", self.prefill_layers, 0)
        require(self.mixer in MIXERS, f"unknown mixer {self.mixer!r}: choose one of {list(MIXERS)}")
        check_int("--samples", self.samples, 1)
        check_int("--batch-size", self.batch_size, 1)
        check_int("--repetitions", self.repetitions, 1)
        check_device("--device", self.device)
        return self


def benchmark_checkpoint(cfg: MuxBenchConfig, progress: bool = True) -> BenchResult:
    """Time the teacher path and the multiplexed path on the first ``cfg.samples`` dev inputs."""
    cfg.validate()
    if cfg.checkpoint is not None:
        mux = MultiplexedClassifier.from_pretrained(cfg.checkpoint).place(cfg.device)
    else:
        backbone = load_backbone(cfg.model, device=cfg.device)
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
    if cfg.texts_file is not None:
        texts = read_texts(cfg.texts_file, cfg.text_columns if cfg.text_columns is not None else ["text"])
    else:
        texts = load_task(cfg.task, "dev", cfg.data_dir).texts
    texts = texts[: cfg.samples]
    return benchmark(mux.teacher(), mux, texts, cfg.batch_size, cfg.repetitions, progress=progress)
