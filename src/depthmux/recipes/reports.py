"""Reports of the RevMUX grid experiment: one result row per configuration, and the rich table,
markdown table, JSON and accuracy-vs-speedup plot written from those rows (SPEC 1.4, 1.5).

Layout written by :func:`write_results` into the run folder::

    results.json   {"dataset": ..., "teacher": ..., "config": ..., "threads": ..., "rows": [ResultRow.as_dict(), ...]}
    results.md     the markdown table (README tables are copied from it)
    results.png    accuracy (mean ± std over groupings) against measured speedup

F1 is shown beside accuracy whenever accuracy alone misleads: MRPC's binary F1 (its GLUE metric),
and the macro F1 on every other data set that :func:`is_imbalanced` (more than two classes, or a
majority class above :data:`IMBALANCE_MAJORITY` of the evaluation set), with the per-class counts.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from rich.table import Table

from depthmux.multiplexing.evaluation import BenchResult, GroupedScore
from depthmux.utils.checkpoint import atomic_write_text


@dataclass
class ResultRow:
    """One configuration's result: N = 1 is the teacher row (no benchmark, no prefill)."""

    n: int
    prefill_layers: int
    mixer: str
    accuracy: GroupedScore
    teacher_accuracy: float
    bench: BenchResult | None
    checkpoint: str | None
    best_epoch: int | None = None
    teacher: str = "probe"  # which teacher the head and the baseline come from: probe | finetune
    dataset: str | None = None
    lambda_info: float | None = None
    seed: int | None = None
    train_examples: int | None = None

    def as_dict(self) -> dict:
        d = asdict(self)
        d["delta_points"] = 100 * (self.accuracy.accuracy_mean - self.teacher_accuracy)
        return d


def row_from_dict(d: dict) -> ResultRow:
    """Rebuild a :class:`ResultRow` from :meth:`ResultRow.as_dict` (a sweep's ``cell.json``)."""
    values = {k: v for k, v in d.items() if k != "delta_points"}
    values["accuracy"] = GroupedScore(**values["accuracy"])
    values["bench"] = BenchResult(**values["bench"]) if values.get("bench") else None
    return ResultRow(**values)


#: Majority-class share of the evaluation set above which accuracy is reported with F1.
IMBALANCE_MAJORITY = 0.6


def is_imbalanced(support: list[int]) -> bool:
    """More than two classes, or one class above :data:`IMBALANCE_MAJORITY` of the examples."""
    total = sum(support)
    return len(support) > 2 or (total > 0 and max(support) / total > IMBALANCE_MAJORITY)


def f1_kind(rows: list[ResultRow], task: str) -> str | None:
    """Which F1 the tables show: "binary" (MRPC), "macro" (imbalanced or multi-class data) or None."""
    if task == "mrpc":
        return "binary"
    support = next((r.accuracy.support for r in rows if r.accuracy.support), [])
    return "macro" if is_imbalanced(support) else None


def _f1_cell(score: GroupedScore, kind: str) -> str:
    mean, std = (score.f1_mean, score.f1_std) if kind == "binary" else (score.macro_f1_mean, score.macro_f1_std)
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def class_counts(rows: list[ResultRow], label_names: list[str] | None = None) -> str:
    """ "neg 412, pos 460": the evaluation set's examples per class (label ids when names are unknown)."""
    support = next((r.accuracy.support for r in rows if r.accuracy.support), [])
    names = label_names if label_names and len(label_names) == len(support) else [str(i) for i in range(len(support))]
    return ", ".join(f"{name} {count}" for name, count in zip(names, support, strict=True))


def row_line(r: ResultRow) -> str:
    """One line per finished configuration, for the progress log."""
    speed = f", speedup {r.bench.speedup:.2f}x (ceiling {r.bench.ceiling:.2f}x)" if r.bench else ""
    if r.bench and r.bench.busy():
        speed += f" [warning: {r.bench.busy()}]"
    return (
        f"N={r.n} l={r.prefill_layers} {r.mixer}: accuracy {r.accuracy} (teacher {100 * r.teacher_accuracy:.2f}){speed}"
    )


def _busy_warnings(rows: list[ResultRow]) -> list[str]:
    """:meth:`BenchResult.busy` of each timed configuration that has one."""
    return [f"N={r.n} l={r.prefill_layers} {r.mixer}: {r.bench.busy()}" for r in rows if r.bench and r.bench.busy()]


def _teacher_kind(rows: list[ResultRow]) -> str:
    return ", ".join(sorted({r.teacher for r in rows})) or "probe"


def results_table(rows: list[ResultRow], task: str, label_names: list[str] | None = None) -> Table:
    """The terminal table: teacher (N = 1) first, then each multiplexed configuration; an F1 column
    (and the per-class counts in the caption) when :func:`f1_kind` says so."""
    f1 = f1_kind(rows, task)
    t = Table(
        title=f"RevMUX on {task}: teacher (N=1, {_teacher_kind(rows)}) vs multiplexed, dev accuracy over random "
        "groupings",
        caption="\n".join(
            ([f"dev examples per class: {class_counts(rows, label_names)}"] if f1 else [])
            + [f"warning: {w}" for w in _busy_warnings(rows)]
        )
        or None,
    )
    columns = ["N", "l", "mixer", "accuracy % (mean ± std)"]
    columns += [f"{f1} F1 %"] if f1 else []
    for c in (*columns, "Δ vs teacher", "speedup", "ceiling", "of ceiling"):
        t.add_column(c, justify="right")
    for r in rows:
        b = r.bench
        t.add_row(
            str(r.n),
            "-" if r.n == 1 else str(r.prefill_layers),
            r.mixer,
            str(r.accuracy),
            *([_f1_cell(r.accuracy, f1)] if f1 else []),
            "" if r.n == 1 else f"{100 * (r.accuracy.accuracy_mean - r.teacher_accuracy):+.2f}",
            f"{b.speedup:.2f}x" if b else "1.00x" if r.n == 1 else "-",
            f"{b.ceiling:.2f}x" if b else "-",
            f"{100 * b.fraction_of_ceiling:.0f}%" if b else "-",
        )
    return t


def results_markdown(rows: list[ResultRow], task: str, label_names: list[str] | None = None) -> str:
    """The same table in markdown, under a line naming the data set and the teacher; MRPC adds its
    F1 column (SPEC 1.4), imbalanced or multi-class data a macro-F1 column and the class counts."""
    f1 = f1_kind(rows, task)
    head = (
        "| N | l | mixer | accuracy % (mean ± std) |"
        + (f" {f1} F1 % |" if f1 else "")
        + " Δ vs teacher | speedup (min-max) | ceiling | of ceiling |"
    )
    intro = f"RevMUX on {task}, teacher: {_teacher_kind(rows)}"
    intro += f"; dev examples per class: {class_counts(rows, label_names)}" if f1 else ""
    intro += "".join(f"\n\nwarning: {w}" for w in _busy_warnings(rows))
    lines = [intro, "", head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        b = r.bench
        f1_cell = f" {_f1_cell(r.accuracy, f1)} |" if f1 else ""
        delta = "" if r.n == 1 else f"{100 * (r.accuracy.accuracy_mean - r.teacher_accuracy):+.2f}"
        speed = (
            f"{b.speedup:.2f}x ({b.speedup_min:.2f}-{b.speedup_max:.2f}) | {b.ceiling:.2f}x | "
            f"{100 * b.fraction_of_ceiling:.0f}% |"
            if b
            else "1.00x | - | - |"
        )
        lines.append(
            f"| {r.n} | {'-' if r.n == 1 else r.prefill_layers} | {r.mixer} | {r.accuracy} |{f1_cell} {delta} | {speed}"
        )
    return "\n".join(lines) + "\n"


def write_results(
    rows: list[ResultRow], config: dict, task: str, out: Path, label_names: list[str] | None = None
) -> None:
    """Atomically (re)write ``results.json``, ``results.md`` and ``results.png`` in ``out``; ``task`` is the
    data set's name (a built-in task or the user's train-file stem)."""
    payload = {
        "dataset": task,
        "teacher": _teacher_kind(rows),
        "label_names": label_names,
        "config": config,
        "threads": torch.get_num_threads(),
        "rows": [r.as_dict() for r in rows],
    }
    atomic_write_text(out / "results.json", json.dumps(payload, indent=2))
    atomic_write_text(out / "results.md", results_markdown(rows, task, label_names))
    plot_results(rows, out / "results.png", task)


def plot_results(rows: list[ResultRow], path: Path, task: str) -> None:
    """Accuracy (mean ± std) against measured speedup, one point per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        x = r.bench.speedup if r.bench else 1.0
        y = 100 * r.accuracy.accuracy_mean
        ax.errorbar(x, y, yerr=100 * r.accuracy.accuracy_std, fmt="o", capsize=3)
        label = f"teacher ({r.teacher})" if r.n == 1 else f"N={r.n} l={r.prefill_layers} {r.mixer[:3]}"
        ax.annotate(label, (x, y), fontsize=7, xytext=(4, 4), textcoords="offset points")
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
