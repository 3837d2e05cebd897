"""Reports of the RevMUX grid experiment: one result row per configuration, and the rich table,
markdown table, JSON and accuracy-vs-speedup plot written from those rows (SPEC 1.4, 1.5).

Layout written by :func:`write_results` into the run folder::

    results.json   {"config": ..., "threads": ..., "rows": [ResultRow.as_dict(), ...]}
    results.md     the markdown table (README tables are copied from it)
    results.png    accuracy (mean ± std over groupings) against measured speedup
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

    def as_dict(self) -> dict:
        d = asdict(self)
        d["delta_points"] = 100 * (self.accuracy.accuracy_mean - self.teacher_accuracy)
        return d


def row_line(r: ResultRow) -> str:
    """One line per finished configuration, for the progress log."""
    speed = f", speedup {r.bench.speedup:.2f}x (ceiling {r.bench.ceiling:.2f}x)" if r.bench else ""
    return (
        f"N={r.n} l={r.prefill_layers} {r.mixer}: accuracy {r.accuracy} (teacher {100 * r.teacher_accuracy:.2f}){speed}"
    )


def results_table(rows: list[ResultRow], task: str) -> Table:
    """The terminal table: teacher (N = 1) first, then each multiplexed configuration."""
    t = Table(title=f"RevMUX on {task}: teacher (N=1) vs multiplexed, dev accuracy over random groupings")
    for c in ("N", "l", "mixer", "accuracy % (mean ± std)", "Δ vs teacher", "speedup", "ceiling", "of ceiling"):
        t.add_column(c, justify="right")
    for r in rows:
        b = r.bench
        t.add_row(
            str(r.n),
            "-" if r.n == 1 else str(r.prefill_layers),
            r.mixer,
            str(r.accuracy),
            "" if r.n == 1 else f"{100 * (r.accuracy.accuracy_mean - r.teacher_accuracy):+.2f}",
            f"{b.speedup:.2f}x" if b else "1.00x" if r.n == 1 else "-",
            f"{b.ceiling:.2f}x" if b else "-",
            f"{100 * b.fraction_of_ceiling:.0f}%" if b else "-",
        )
    return t


def results_markdown(rows: list[ResultRow], task: str) -> str:
    """The same table in markdown; MRPC adds an F1 column (SPEC 1.4)."""
    f1 = task == "mrpc"
    head = (
        "| N | l | mixer | accuracy % (mean ± std) |"
        + (" F1 % |" if f1 else "")
        + " Δ vs teacher | speedup (min-max) | ceiling | of ceiling |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        b = r.bench
        f1_cell = f" {100 * r.accuracy.f1_mean:.2f} ± {100 * r.accuracy.f1_std:.2f} |" if f1 else ""
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


def write_results(rows: list[ResultRow], config: dict, task: str, out: Path) -> None:
    """Atomically (re)write ``results.json``, ``results.md`` and ``results.png`` in ``out``."""
    payload = {"config": config, "threads": torch.get_num_threads(), "rows": [r.as_dict() for r in rows]}
    atomic_write_text(out / "results.json", json.dumps(payload, indent=2))
    atomic_write_text(out / "results.md", results_markdown(rows, task))
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
        label = "teacher" if r.n == 1 else f"N={r.n} l={r.prefill_layers} {r.mixer[:3]}"
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
