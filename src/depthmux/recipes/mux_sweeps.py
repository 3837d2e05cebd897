"""RevMUX sweeps behind ``depthmux mux sweep``: one command over N × l × λ × mixer × seed (× train-set
size, the learning curve), resumable cell by cell (SPEC 1.3-1.5, the paper's ablations).

The sweep is built from the experiment's own parts (:func:`~depthmux.recipes.mux.prepare_task`,
:func:`~depthmux.recipes.mux.run_cell`): for each train-set size the data is loaded, the teacher
trained (or fine-tuned) and the frozen features cached at every prefill depth once; every cell then
trains only its adapters on those caches. The speed of an (N, l, mixer) does not depend on λ, the
seed or the train-set size, so it is measured once per data set and shared.

Layout of ``out_dir`` (locked while a sweep writes)::

    sweep.json                         the settings; a rerun must share the data/model/recipe ones
    <dataset>-train<M|all>/teacher/    the frozen teacher of that train-set size (teacher-backbone/ too
                                       for --teacher finetune)
    <dataset>-train<M|all>/n2-l0-reversible-lam0.25-s0/
                                       one cell: a train_mux run folder (best/ is the model) and
                                       cell.json (its ResultRow) once finished; a finished cell is skipped
    bench/<dataset>-n2-l0-reversible.json
                                       the speed of (N, l, mixer) on that data, measured once
    sweep_results.json / .md           every cell, and the cells aggregated over seeds: the spread over
                                       seeds and the spread over groupings reported separately
    pareto-<dataset>-train<M|all>.png  accuracy vs measured speedup, the Pareto front drawn
    learning-curve-<dataset>.png       gap to the teacher vs train-set size (with several sizes)
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from depthmux.backbones import load_backbone
from depthmux.data import task_name
from depthmux.errors import DepthmuxError, require
from depthmux.multiplexing.evaluation import BenchResult
from depthmux.recipes.mux import (
    EXPERIMENT_KEYS,
    ExperimentConfig,
    check_grid,
    console,
    prepare_task,
    run_cell,
    stored_keys,
)
from depthmux.recipes.reports import ResultRow, row_from_dict, row_line
from depthmux.training.mux import LAMBDA_RANGE
from depthmux.utils.checkpoint import atomic_write_text, read_json
from depthmux.utils.checks import check_float, check_seed
from depthmux.utils.run_folder import RunFolder
from depthmux.utils.seed import seed_everything

#: Settings every rerun of a sweep must share with ``sweep.json`` (the grid's lists may grow).
SWEEP_KEYS = tuple(
    f"experiment.{k}"
    for k in EXPERIMENT_KEYS
    if k not in ("task", "ns", "prefill_layers", "mixers", "max_train", "train.lambda_info", "train.seed")
)


@dataclass
class SweepConfig:
    """The grid of a sweep. ``experiment`` holds the data, model, teacher and training recipe; its ``ns``,
    ``prefill_layers`` and ``mixers`` are three axes of the grid, ``lambdas``, ``seeds`` and
    ``max_trains`` (None: the whole train split) the other three. ``tasks`` (built-in tasks) repeats the
    grid on each, with its own teacher, caches and Pareto plot (None: the experiment's own data).
    ``experiment.train.seed`` seeds the data sample and the teacher; ``seeds`` seed the adapters' training."""

    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    tasks: list[str] | None = None
    lambdas: list[float] = field(default_factory=lambda: [0.25])
    seeds: list[int] = field(default_factory=lambda: [0])
    max_trains: list[int | None] = field(default_factory=lambda: [8000])
    out_dir: str = "runs/sweep"

    def validate(self) -> SweepConfig:
        self.experiment.validate()
        if self.tasks is not None:
            require(isinstance(self.tasks, list) and self.tasks, "--task must name at least one task")
            require(self.experiment.user_data() is None, "sweep either built-in --task(s) or --train/--dev files")
            for t in self.tasks:
                task_name(t)
            require(len(set(self.tasks)) == len(self.tasks), f"--task repeats a task: {self.tasks}")
        require(isinstance(self.lambdas, list) and self.lambdas, "--lambda must list at least one value")
        for lam in self.lambdas:
            check_float("--lambda", lam, *LAMBDA_RANGE)
        require(isinstance(self.seeds, list) and self.seeds, "--seeds must list at least one seed")
        for s in self.seeds:
            check_seed("--seeds", s)
        require(isinstance(self.max_trains, list) and self.max_trains, "--max-train must list at least one size")
        for m in self.max_trains:
            require(
                m is None or (isinstance(m, int) and not isinstance(m, bool) and m >= 1),
                f"--max-train sizes must be >= 1 (or 0 for the whole train split), got {m!r}",
            )
        for axis, values in (("--lambda", self.lambdas), ("--seeds", self.seeds), ("--max-train", self.max_trains)):
            require(len(set(values)) == len(values), f"{axis} repeats a value: {values}")
        require(isinstance(self.out_dir, str) and self.out_dir != "", "--out must be a folder path")
        return self


def _size(m: int | None) -> str:
    return "all" if m is None else str(m)


def _cell_name(n: int, l: int, mixer: str, lam: float, seed: int) -> str:
    return f"n{n}-l{l}-{mixer}-lam{lam:g}-s{seed}"


def run_sweep(cfg: SweepConfig, progress: bool = True) -> list[ResultRow]:
    """Run every cell of ``cfg`` not finished yet (see the module docstring); returns all rows (teachers
    first in each train-set size) and writes the reports."""
    cfg.validate()
    exp = cfg.experiment
    run = RunFolder(cfg.out_dir)
    run.check_writable()
    with run.lock():
        if run.has_json("sweep"):
            run.check_matches("sweep", asdict(cfg), stored_keys(run, "sweep", SWEEP_KEYS))
        elif run.holds_run():
            raise DepthmuxError(f"{run.root} holds something other than a sweep: choose a new --out")
        run.clean_stale_tmp()
        seed_everything(exp.train.seed)
        backbone = load_backbone(exp.model, exp.readout, device=exp.device)
        check_grid(backbone, exp.ns, exp.prefill_layers, exp.mixers)
        run.write_json("sweep", asdict(cfg))
        rows: list[ResultRow] = []
        for task in cfg.tasks or [exp.task]:
            for m in cfg.max_trains:
                rows += _run_size(cfg, replace(exp, task=task, max_train=m, resume=True), backbone, run.root, progress)
                write_sweep_results(rows, cfg, run.root)
        return rows


def _run_size(cfg: SweepConfig, exp: ExperimentConfig, backbone, out: Path, progress: bool) -> list[ResultRow]:
    """Every cell of one data set and train-set size (``exp.max_train``); the data, teacher and caches are
    prepared only if a cell is left."""
    max_train = exp.max_train
    group = out / f"{exp.dataset}-train{_size(max_train)}"
    cells = [
        (n, l, mixer, lam, seed)
        for n in exp.ns
        if n > 1
        for l in exp.prefill_layers
        for mixer in exp.mixers
        for lam in cfg.lambdas
        for seed in cfg.seeds
    ]
    done = {c: group / _cell_name(*c) / "cell.json" for c in cells}
    teacher_json = group / "teacher.json"
    if teacher_json.is_file() and all(p.is_file() for p in done.values()):
        console.print(f"{group.name}: all {len(cells)} cells finished")
        return [row_from_dict(read_json(p, str(p))) for p in (teacher_json, *done.values())]
    group.mkdir(parents=True, exist_ok=True)
    prep = prepare_task(exp, backbone, group, exp.prefill_layers, progress)
    teacher = prep.teacher_row(group)
    atomic_write_text(teacher_json, json.dumps(teacher.as_dict(), indent=2))
    rows = [teacher]
    for (n, l, mixer, lam, seed), path in done.items():
        if path.is_file():
            rows.append(row_from_dict(read_json(path, str(path))))
            continue
        bench_path = out / "bench" / f"{exp.dataset}-n{n}-l{l}-{mixer}.json"  # speed depends on the inputs' lengths
        bench = BenchResult(**read_json(bench_path, str(bench_path))) if bench_path.is_file() else None
        cell = replace(exp, train=replace(exp.train, lambda_info=lam, seed=seed))
        row = run_cell(prep, cell, n, l, mixer, path.parent, progress, bench)
        if bench is None and row.bench is not None:
            bench_path.parent.mkdir(exist_ok=True)
            atomic_write_text(bench_path, json.dumps(row.bench.as_dict(), indent=2))
        atomic_write_text(path, json.dumps(row.as_dict(), indent=2))
        console.print(f"{group.name} λ={lam:g} seed={seed}: {row_line(row)}")
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------ reports


@dataclass
class SweepPoint:
    """One (data set, train size, N, l, mixer, λ) aggregated over its seeds (N = 1: the teacher).

    ``seed_std`` is the spread of the mean accuracy over training seeds; ``grouping_std`` the mean over
    seeds of the spread over random groupings of the dev set (SPEC 1.4): two sources, reported apart.
    """

    dataset: str
    train_examples: int
    n: int
    prefill_layers: int
    mixer: str
    lambda_info: float | None
    seeds: int
    accuracy: float
    seed_std: float
    grouping_std: float
    macro_f1: float
    teacher_accuracy: float
    teacher: str
    speedup: float | None
    ceiling: float | None

    @property
    def gap(self) -> float:
        return self.accuracy - self.teacher_accuracy


def aggregate(rows: list[ResultRow]) -> list[SweepPoint]:
    """Rows grouped by (data set, train size, N, l, mixer, λ), in first-seen order, averaged over seeds."""
    groups: dict[tuple, list[ResultRow]] = {}
    for r in rows:
        key = (r.dataset, r.train_examples, r.n, r.prefill_layers if r.n > 1 else 0, r.mixer, r.lambda_info)
        groups.setdefault(key, []).append(r)
    points = []
    for (dataset, size, n, l, mixer, lam), rs in groups.items():
        accs = [r.accuracy.accuracy_mean for r in rs]
        bench = next((r.bench for r in rs if r.bench is not None), None)
        points.append(
            SweepPoint(
                dataset, size, n, l, mixer, lam, len(rs), statistics.fmean(accs),
                statistics.stdev(accs) if len(accs) > 1 else 0.0,
                statistics.fmean(r.accuracy.accuracy_std for r in rs),
                statistics.fmean(r.accuracy.macro_f1_mean for r in rs),
                statistics.fmean(r.teacher_accuracy for r in rs), rs[0].teacher,
                1.0 if n == 1 else bench.speedup if bench else None, bench.ceiling if bench else None,
            )
        )  # fmt: skip
    return points


def sweep_markdown(points: list[SweepPoint]) -> str:
    """One table row per aggregated point; accuracy as mean ± std over seeds, then the grouping spread."""
    head = (
        "| data | train | teacher | N | l | mixer | λ | seeds | accuracy % (± seeds) | ± groupings | macro F1 % "
        "| Δ vs teacher | speedup | ceiling |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for p in points:
        teacher_row = p.n == 1
        speed = "-" if p.speedup is None else f"{p.speedup:.2f}x"
        ceiling = "-" if p.ceiling is None else f"{p.ceiling:.2f}x"
        lines.append(
            f"| {p.dataset} | {p.train_examples} | {p.teacher} | {p.n} | {'-' if teacher_row else p.prefill_layers} "
            f"| {p.mixer} | {'-' if p.lambda_info is None else f'{p.lambda_info:g}'} | {p.seeds} "
            f"| {100 * p.accuracy:.2f} ± {100 * p.seed_std:.2f} | {100 * p.grouping_std:.2f} "
            f"| {100 * p.macro_f1:.2f} | {'' if teacher_row else f'{100 * p.gap:+.2f}'} | {speed} | {ceiling} |"
        )
    return "\n".join(lines) + "\n"


def learning_curve_markdown(points: list[SweepPoint]) -> str:
    """Gap to the teacher (points) per train-set size, one column per (N, l, mixer, λ)."""
    configs = list(dict.fromkeys((p.n, p.prefill_layers, p.mixer, p.lambda_info) for p in points if p.n > 1))
    sizes = sorted({p.train_examples for p in points})
    by = {(p.train_examples, p.n, p.prefill_layers, p.mixer, p.lambda_info): p for p in points}
    teacher = {p.train_examples: p for p in points if p.n == 1}
    head = (
        "| train examples | teacher % | " + " | ".join(f"N={n} l={l} {m} λ={lam:g}" for n, l, m, lam in configs) + " |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for size in sizes:
        cells = []
        for c in configs:
            p = by.get((size, *c))
            cells.append("-" if p is None else f"{100 * p.gap:+.2f} ± {100 * p.seed_std:.2f}")
        t = teacher.get(size)
        lines.append(f"| {size} | {'-' if t is None else f'{100 * t.accuracy:.2f}'} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def pareto_front(points: list[SweepPoint]) -> list[SweepPoint]:
    """The points no other point beats on both speedup and accuracy, by increasing speedup."""
    timed = sorted((p for p in points if p.speedup is not None), key=lambda p: (-p.speedup, -p.accuracy))
    front, best = [], -1.0
    for p in timed:  # from the fastest down: keep each point more accurate than every faster one
        if p.accuracy > best:
            front.append(p)
            best = p.accuracy
    return front[::-1]


def _save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def plot_pareto(points: list[SweepPoint], path: Path, title: str) -> None:
    """Accuracy (± seeds) against measured speedup, one marker per mixer, the Pareto front as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = dict(zip(("teacher", "reversible", "vanilla", "datamux", "ora"), "*osD^", strict=True))
    for p in points:
        if p.speedup is None:
            continue
        ax.errorbar(
            p.speedup,
            100 * p.accuracy,
            yerr=100 * p.seed_std,
            fmt=markers.get(p.mixer, "o"),
            capsize=2,
            color="black" if p.n == 1 else None,
        )
        label = "teacher" if p.n == 1 else f"N={p.n} l={p.prefill_layers} {p.mixer[:3]} λ={p.lambda_info:g}"
        ax.annotate(label, (p.speedup, 100 * p.accuracy), fontsize=6, xytext=(3, 3), textcoords="offset points")
    front = pareto_front(points)
    ax.plot([p.speedup for p in front], [100 * p.accuracy for p in front], "--", color="gray", label="Pareto front")
    ax.set_xlabel("measured speedup vs teacher (x)")
    ax.set_ylabel("dev accuracy % (mean ± std over seeds)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save_figure(fig, path)


def plot_learning_curve(points: list[SweepPoint], path: Path, title: str) -> None:
    """Gap to the teacher (points, ± seeds) against train-set size, one line per (N, l, mixer, λ)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    configs = list(dict.fromkeys((p.n, p.prefill_layers, p.mixer, p.lambda_info) for p in points if p.n > 1))
    for c in configs:
        ps = sorted(
            (p for p in points if (p.n, p.prefill_layers, p.mixer, p.lambda_info) == c), key=lambda p: p.train_examples
        )
        ax.errorbar(
            [p.train_examples for p in ps],
            [100 * p.gap for p in ps],
            yerr=[100 * p.seed_std for p in ps],
            marker="o",
            capsize=2,
            label=f"N={c[0]} l={c[1]} {c[2]} λ={c[3]:g}",
        )
    ax.axhline(0.0, color="black", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("train examples")
    ax.set_ylabel("accuracy - teacher (points)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    fig.tight_layout()
    _save_figure(fig, path)


def write_sweep_results(rows: list[ResultRow], cfg: SweepConfig, out: Path) -> list[SweepPoint]:
    """(Re)write ``sweep_results.json``/``.md``, a Pareto plot per (data set, train size) and, with several
    train sizes, the learning curve."""
    points = aggregate(rows)
    payload = {
        "config": asdict(cfg),
        "teacher": cfg.experiment.teacher,
        "cells": [r.as_dict() for r in rows],
        "aggregated": [asdict(p) | {"gap": p.gap} for p in points],
    }
    atomic_write_text(out / "sweep_results.json", json.dumps(payload, indent=2))
    text = f"RevMUX sweep, teacher: {cfg.experiment.teacher}\n\n" + sweep_markdown(points)
    sizes = sorted({p.train_examples for p in points})
    if len(sizes) > 1:
        text += "\nLearning curve: accuracy - teacher (points, ± over seeds)\n\n" + learning_curve_markdown(points)
    atomic_write_text(out / "sweep_results.md", text)
    model = Path(cfg.experiment.model).name
    for dataset in dict.fromkeys(p.dataset for p in points):
        mine = [p for p in points if p.dataset == dataset]
        for size in sorted({p.train_examples for p in mine}):
            plot_pareto(
                [p for p in mine if p.train_examples == size],
                out / f"pareto-{dataset}-train{size}.png",
                f"RevMUX on {dataset} ({model}), {size} train examples, teacher: {cfg.experiment.teacher}",
            )
        if len({p.train_examples for p in mine}) > 1:
            title = f"RevMUX on {dataset} ({model}): gap to the teacher"
            plot_learning_curve(mine, out / f"learning-curve-{dataset}.png", title)
    return points
