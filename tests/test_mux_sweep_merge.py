"""``scripts/mux_sweep_merge.py``: folders from several devices merge into one table, each Δ against its
own folder's teacher, every distinct teacher run listed, each cell tagged with its device."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from depthmux.multiplexing.evaluation import GroupedScore
from depthmux.recipes.reports import ResultRow, row_from_dict

ROOT = Path(__file__).resolve().parents[1]


def _merge_module():
    spec = importlib.util.spec_from_file_location("mux_sweep_merge", ROOT / "scripts" / "mux_sweep_merge.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _score(acc: float) -> GroupedScore:
    return GroupedScore(acc, 0.01, acc, 0.0, [acc], 1, acc, 0.0, [acc, acc], [10, 10])


def _folder(root: Path, device: str, teacher_acc: float, cells: list[tuple[int, float]]) -> Path:
    """A sweep folder with its teacher and one N = 2, l = 2 cell per (seed, accuracy)."""
    root.mkdir(parents=True)
    (root / "sweep.json").write_text(json.dumps({"experiment": {"device": device}}))
    sub = root / "toy-train100"
    sub.mkdir()
    common = dict(teacher_accuracy=teacher_acc, bench=None, checkpoint=None, dataset="toy", train_examples=100)
    teacher = ResultRow(1, 4, "teacher", _score(teacher_acc), **common)
    (sub / "teacher.json").write_text(json.dumps(teacher.as_dict()))
    for seed, acc in cells:
        cell = ResultRow(2, 2, "reversible", _score(acc), lambda_info=0.25, seed=seed, **common)
        (sub / f"s{seed}").mkdir()
        (sub / f"s{seed}" / "cell.json").write_text(json.dumps(cell.as_dict()))
    return root


def test_merge_keeps_each_cells_own_teacher_and_device(tmp_path, capsys):
    gpu = _folder(tmp_path / "gpu", "cuda", 0.80, [(0, 0.70), (1, 0.72)])
    cpu = _folder(tmp_path / "cpu", "cpu", 0.90, [(2, 0.86)])
    assert _merge_module().main([str(gpu), str(cpu), "--out", str(tmp_path / "merged")]) == 0
    text = (tmp_path / "merged.md").read_text()
    assert "N=2 l=2 s0: 70.00 (cuda)" in text and "N=2 l=2 s2: 86.00 (cpu)" in text
    assert "Teacher runs differ: 80.00 on cuda" in text and "90.00 on cpu" in text
    # Δ = mean over cells of (accuracy - own teacher): (-10, -8, -4) / 3 = -7.33, not 76 - 80 = -4
    assert "| -7.33 |" in text
    payload = json.loads((tmp_path / "merged.json").read_text())
    assert sorted(row_from_dict(c).seed for c in payload["cells"]) == [0, 1, 2]
    assert "Teacher runs differ" in capsys.readouterr().out


def test_merge_with_one_teacher_lists_no_difference(tmp_path):
    gpu = _folder(tmp_path / "gpu", "cuda", 0.80, [(0, 0.70)])
    assert _merge_module().main([str(gpu), "--out", str(tmp_path / "merged")]) == 0
    assert "Teacher runs differ" not in (tmp_path / "merged.md").read_text()


def test_merge_refuses_a_missing_folder_and_an_empty_one(tmp_path, capsys):
    merge = _merge_module()
    assert merge.main([str(tmp_path / "nope"), "--out", str(tmp_path / "m")]) == 2
    (tmp_path / "empty").mkdir()
    assert merge.main([str(tmp_path / "empty"), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "is not a folder" in err and "no finished cell" in err
