"""Merge ``depthmux mux sweep`` folders that ran in parallel (one process per cell group, or on several
machines) into one table per teacher, with speedups from ``depthmux mux bench --json`` files measured
elsewhere (e.g. on the CPU when the accuracy came from a GPU run).

    python scripts/mux_sweep_merge.py SWEEP_FOLDER... [--bench BENCH.json ...] --out PREFIX

Reads every ``teacher.json`` and ``cell.json`` below the folders (finished cells only: a cell cut off by a
time limit has no ``cell.json``), aggregates them with the library's own :func:`aggregate` (mean ± std over
training seeds, then the spread over groupings), attaches the benchmark of the same (N, l), and writes
``PREFIX.md``, ``PREFIX.json`` and ``PREFIX-<teacher>.png`` (the Pareto plot).

Folders may come from different devices (a sweep's ``sweep.json`` records it): each cell's Δ is taken against
the teacher of its own folder (``teacher_accuracy`` in its ``cell.json``), every distinct teacher run is listed
under the table, and each cell is listed with the device it trained on.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path

from depthmux.multiplexing.evaluation import BenchResult
from depthmux.recipes.mux_sweeps import aggregate, plot_pareto, sweep_markdown
from depthmux.recipes.reports import row_from_dict


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--bench", nargs="*", type=Path, default=[], help="`depthmux mux bench --json` outputs")
    ap.add_argument("--out", required=True, type=Path, help="output prefix (writes PREFIX.md/.json/-<teacher>.png)")
    args = ap.parse_args(argv)
    benches = {}
    for path in args.bench:
        b = BenchResult(**json.loads(path.read_text()))
        benches[(b.n, b.prefill_layers)] = b
    teachers, teacher_runs, cells, device_of = {}, {}, [], {}
    for folder in args.folders:
        if not folder.is_dir():
            print(f"error: {folder} is not a folder", file=sys.stderr)
            return 2
        device = _folder_device(folder)
        for path in sorted(folder.rglob("teacher.json")):
            row = row_from_dict(json.loads(path.read_text()))
            key = (row.dataset, row.teacher, row.train_examples)
            teachers.setdefault(key, row)
            teacher_runs.setdefault(key, Counter())[(round(row.accuracy.accuracy_mean, 6), device)] += 1
        for path in sorted(folder.rglob("cell.json")):
            row = row_from_dict(json.loads(path.read_text()))
            cells.append(replace(row, bench=row.bench or benches.get((row.n, row.prefill_layers))))
            device_of[_cell_key(row)] = device
    if not cells:
        print("error: no finished cell (cell.json) below the folders", file=sys.stderr)
        return 2
    text, payload = [], {"cells": [c.as_dict() for c in cells], "aggregated": {}}
    for (dataset, teacher, size), trow in teachers.items():
        mine = [c for c in cells if (c.dataset, c.teacher, c.train_examples) == (dataset, teacher, size)]
        mine.sort(key=lambda c: (c.n, c.prefill_layers, c.mixer, c.lambda_info, c.seed))
        points = aggregate([trow, *mine])
        payload["aggregated"][teacher] = [asdict(p) | {"gap": p.gap} for p in points]
        seeds = ", ".join(
            f"N={c.n} l={c.prefill_layers} s{c.seed}: {100 * c.accuracy.accuracy_mean:.2f} ({device_of[_cell_key(c)]})"
            for c in mine
        )
        text += [f"### {dataset}, teacher: {teacher}", "", sweep_markdown(points), f"Cells: {seeds}", ""]
        runs = teacher_runs[(dataset, teacher, size)]
        if len(runs) > 1:
            listed = "; ".join(f"{100 * acc:.2f} on {dev} ({k} folders)" for (acc, dev), k in runs.items())
            text += [f"Teacher runs differ: {listed}. The N = 1 row shows the first; each Δ uses its cell's own.", ""]
        plot_pareto(points, args.out.with_name(f"{args.out.name}-{teacher}.png"), f"RevMUX on {dataset}, {teacher}")
    if benches:
        text += ["Speed (`depthmux mux bench`, random adapters, teacher and multiplexed path interleaved):", ""]
        for b in benches.values():
            text.append(
                f"- N={b.n} l={b.prefill_layers}: {b.speedup:.2f}x ({b.speedup_min:.2f}-{b.speedup_max:.2f}), ceiling "
                f"{b.ceiling:.2f}x = {100 * b.fraction_of_ceiling:.0f}%; {b.samples} inputs, batch {b.batch_size}, "
                f"{b.repetitions} repetitions, {b.device} ({b.threads} threads)"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text("\n".join(text) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(payload, indent=2))
    print("\n".join(text))
    return 0


def _cell_key(row) -> tuple:
    """What tells one finished cell from another across the merged folders."""
    return (
        row.dataset,
        row.teacher,
        row.train_examples,
        row.n,
        row.prefill_layers,
        row.mixer,
        row.lambda_info,
        row.seed,
    )


def _folder_device(folder: Path) -> str:
    """The device a sweep folder ran on, from its ``sweep.json`` ("?" when it does not say)."""
    path = folder / "sweep.json"
    if not path.is_file():
        return "?"
    return str(json.loads(path.read_text()).get("experiment", {}).get("device") or "?")


if __name__ == "__main__":
    sys.exit(main())
