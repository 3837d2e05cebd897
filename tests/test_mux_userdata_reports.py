"""Reporting for imbalanced, multi-class and users' data: when F1 is shown (MRPC's binary F1, else the
macro F1 with per-class counts), and `mux bench --dev FILE` timing a user's own texts."""

from __future__ import annotations

import json

import pytest

from depthmux.cli import main
from depthmux.multiplexing.evaluation import GroupedScore, per_class_f1
from depthmux.recipes.reports import ResultRow, f1_kind, is_imbalanced, results_markdown, row_from_dict


def _rows(support, teacher="probe"):
    score = GroupedScore(0.8, 0.01, 0.7, 0.02, [0.8], 1, 0.6, 0.03, [0.5, 0.7][: len(support)], support)
    return [ResultRow(1, 6, "teacher", score, 0.8, None, None, teacher=teacher)]


def test_is_imbalanced():
    assert not is_imbalanced([50, 50]) and not is_imbalanced([60, 40])
    assert is_imbalanced([61, 39]) and is_imbalanced([10, 10, 10])


def test_f1_shown_for_mrpc_and_imbalanced_data_only():
    assert f1_kind(_rows([50, 50]), "mrpc") == "binary"
    assert f1_kind(_rows([50, 50]), "sst2") is None
    assert f1_kind(_rows([90, 10]), "spam") == "macro"
    balanced = results_markdown(_rows([50, 50]), "sst2")
    assert "F1" not in balanced and "teacher: probe" in balanced
    imbalanced = results_markdown(_rows([90, 10], teacher="finetune"), "spam", ["ham", "spam"])
    assert "macro F1 %" in imbalanced and "60.00 ± 3.00" in imbalanced
    assert "dev examples per class: ham 90, spam 10" in imbalanced and "teacher: finetune" in imbalanced
    assert "binary F1 %" in results_markdown(_rows([50, 50]), "mrpc") and "70.00 ± 2.00" in results_markdown(
        _rows([50, 50]), "mrpc"
    )


def test_per_class_f1_and_row_round_trip():
    import torch

    pred, gold = torch.tensor([0, 0, 1, 2, 2, 2]), torch.tensor([0, 1, 1, 2, 2, 0])
    assert per_class_f1(pred, gold, 4) == pytest.approx([0.5, 2 / 3, 0.8, 0.0])
    row = _rows([3, 3])[0]
    assert row_from_dict(json.loads(json.dumps(row.as_dict()))) == row


def test_bench_times_a_users_own_texts(tmp_path, tiny_backbone, capsys):
    tiny_backbone.model.save_pretrained(tmp_path / "bert")
    tiny_backbone.tokenizer.save_pretrained(tmp_path / "bert")
    (tmp_path / "mine.jsonl").write_text("".join(json.dumps({"body": f"text number {i}"}) + "\n" for i in range(9)))
    main(["mux", "bench", "--model", str(tmp_path / "bert"), "--dev", str(tmp_path / "mine.jsonl"),
          "--text-column", "body", "--samples", "6", "--batch-size", "4", "--repetitions", "1", "--json"])  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    assert result["samples"] == 6 and result["n"] == 2 and result["teacher_samples_per_s"] > 0
