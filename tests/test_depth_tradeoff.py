"""``scripts/depth_tradeoff.py``: issue 19's table and plot read every number from the result files the
manifest names (bench-decode ratios from one process, ee bench rows, NLL from an eval or a run's log)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("depth_tradeoff", ROOT / "scripts" / "depth_tradeoff.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write(path: Path, data) -> str:
    path.write_text("\n".join(json.dumps(d) for d in data) if path.suffix == ".jsonl" else json.dumps(data))
    return path.name


def test_table_and_plot_come_from_the_named_files(tmp_path, capsys):
    bench = {
        "configs": {
            "vanilla/engine_lockstep": {"tokens_per_s_runs": [10.0, 20.0, 12.0]},
            "also1/engine_lockstep": {"tokens_per_s_runs": [15.0, 22.0, 18.0]},
        },
        "counts": {"also1": {"flops_per_generated_token": 5.0e8, "decode_average_depth": 2.25}},
    }
    ee = {"results": [{"config": "exit@0.9", "batch_size": 1, "speedup_vs_deep": 1.31, "tokens_per_s": 9.0,
                       "token_agreement": 0.96, "exit_rate": 0.4, "acceptance_rate": 0.0}]}  # fmt: skip
    shots = {"tasks": {"depthmux_sst2": {"acc": 0.61, "acc_stderr": 0.03}}}
    manifest = {
        "rows": [
            {
                "name": "trunc",
                "group": "trunc",
                "budget": "150 steps",
                "nll": {"train_log": _write(tmp_path / "log.jsonl", [{"step": 50, "eval": {"nll": 4.5}},
                                                                      {"step": 150, "eval": {"nll": 3.79}}])},
                "fewshot": _write(tmp_path / "shots.json", shots),
                "speed": {"file": _write(tmp_path / "b.json", bench), "num": "also1/engine_lockstep",
                          "den": "vanilla/engine_lockstep"},
                "flops": {"file": "b.json", "side": "also1"},
            },
            {"name": "exit", "group": "ee", "speed": {"file": _write(tmp_path / "ee.json", ee), "config": "exit@0.9"}},
        ]
    }  # fmt: skip
    manifest["rows"][0]["nll"]["step"] = 150
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    mod = _module()
    rows = mod.collect(tmp_path / "m.json")
    assert rows[0]["nll"] == 3.79
    assert rows[0]["speed"]["ratio"] == pytest.approx(18.0 / 12.0)  # median over median
    assert (rows[0]["speed"]["low"], rows[0]["speed"]["high"]) == pytest.approx((1.1, 1.5))  # per-repeat pairs
    assert rows[1]["speed"]["ratio"] == 1.31 and rows[1]["speed"]["agreement"] == 0.96
    assert (
        mod.main([str(tmp_path / "m.json"), "--markdown", str(tmp_path / "t.md"), "--plot", str(tmp_path / "p.png")])
        == 0
    )
    table = (tmp_path / "t.md").read_text()
    assert "| trunc | 150 steps | 3.790 | 0.610 ± 0.030 |" in table and "**1.50** (1.10-1.50)" in table
    assert "0.500 (depth 2.25)" in table and "0.960 / 0.40" in table
    assert (tmp_path / "p.png").stat().st_size > 1000
    (tmp_path / "mine.md").write_text("a user's notes")  # an existing file is refused, untouched
    with pytest.raises(SystemExit) as e:
        mod.main([str(tmp_path / "m.json"), "--markdown", str(tmp_path / "mine.md")])
    assert e.value.code == 2 and "already exists" in capsys.readouterr().err
    assert (tmp_path / "mine.md").read_text() == "a user's notes"
    manifest["rows"][0]["nll"]["step"] = 300  # a step the log does not have: one clear line
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    with pytest.raises(SystemExit) as e:
        mod.collect(tmp_path / "m.json")
    assert e.value.code == 2 and "no evaluation at step 300" in capsys.readouterr().err
