"""`depthmux mux sweep`: every cell a run folder, finished cells skipped on a rerun, the grid may grow,
speed measured once per (N, l, mixer), the spread over seeds and over groupings reported apart, a
Pareto plot and a learning curve."""

from __future__ import annotations

import json
import random

import pytest

import depthmux.recipes.mux as recipe
from depthmux.cli import main
from depthmux.errors import DepthmuxError
from depthmux.multiplexing.evaluation import GroupedScore
from depthmux.recipes.mux import ExperimentConfig, MuxTrainConfig
from depthmux.recipes.mux_sweeps import SweepConfig, SweepPoint, aggregate, pareto_front, run_sweep
from depthmux.recipes.reports import ResultRow
from depthmux.utils.run_folder import MARKER

POS, NEG = ["good", "great", "fun"], ["bad", "awful", "dull"]
FILL = ["the", "movie", "plot", "a", "was", "really", "and", "story"]


def _csv(path, rng, rows):
    lines = ["text,label"]
    for _ in range(rows):
        y = rng.randint(0, 1)
        words = rng.choices(FILL, k=rng.randint(1, 6)) + [rng.choice(POS if y else NEG)]
        lines.append(f"{' '.join(words)},{'pos' if y else 'neg'}")
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def sweep_setup(tmp_path, tiny_backbone):
    tiny_backbone.model.save_pretrained(tmp_path / "bert")
    tiny_backbone.tokenizer.save_pretrained(tmp_path / "bert")
    rng = random.Random(0)
    _csv(tmp_path / "movies.csv", rng, 50)
    _csv(tmp_path / "movies_dev.csv", rng, 16)
    return tmp_path


def _sweep(root, seeds=(0, 1), lr=1e-3) -> SweepConfig:
    experiment = ExperimentConfig(
        train_file=str(root / "movies.csv"), dev_file=str(root / "movies_dev.csv"), model=str(root / "bert"),
        ns=[2], prefill_layers=[0, 1], mixers=["reversible"], shuffles=2, bench=True, bench_samples=8,
        bench_repetitions=1, train=MuxTrainConfig(epochs=1, batch_size=8, lr=lr, min_steps=8, patience=2),
    )  # fmt: skip
    return SweepConfig(experiment, lambdas=[0.0, 0.5], seeds=list(seeds), max_trains=[20, None],
                       out_dir=str(root / "sweep"))  # fmt: skip


def _count_training(monkeypatch) -> list:
    calls = []
    real = recipe.train_mux

    def counting(model, *args, **kwargs):
        calls.append(model.config)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(recipe, "train_mux", counting)
    return calls


def test_sweep_runs_resumes_and_grows(sweep_setup, monkeypatch):
    root = sweep_setup
    calls = _count_training(monkeypatch)
    rows = run_sweep(_sweep(root), progress=False)
    out = root / "sweep"
    assert len(calls) == 2 * 2 * 2 * 2  # sizes × l × λ × seeds
    assert len(rows) == 2 * (1 + 8) and [r.n for r in rows[:2]] == [1, 2]
    assert {r.train_examples for r in rows} == {20, 45}  # 20, and all of train less the 10% validation
    benches = sorted(p.name for p in (out / "bench").iterdir())
    assert benches == ["movies-n2-l0-reversible.json", "movies-n2-l1-reversible.json"]
    cell = out / "movies-train20" / "n2-l1-reversible-lam0.5-s1"
    assert (cell / "best").is_dir() and (cell / "cell.json").is_file()
    # min_steps=8 raises 1 epoch to 3 on 20 examples (3 steps per epoch); patience 2 cannot stop before 3
    assert len((cell / "log.jsonl").read_text().splitlines()) == 3

    results = json.loads((out / "sweep_results.json").read_text())
    assert len(results["cells"]) == 18 and len(results["aggregated"]) == 2 * (1 + 4)
    point = results["aggregated"][1]
    assert point["seeds"] == 2 and {"seed_std", "grouping_std", "speedup", "gap"} <= set(point)
    markdown = (out / "sweep_results.md").read_text()
    assert "± groupings" in markdown and "Learning curve" in markdown
    assert (out / "pareto-movies-train20.png").is_file() and (out / "learning-curve-movies.png").is_file()

    # a rerun trains nothing and caches nothing; the rows come back from the cells
    monkeypatch.setattr(recipe, "build_feature_cache", lambda *a, **k: pytest.fail("cached features again"))
    again = run_sweep(_sweep(root), progress=False)
    assert len(calls) == 16
    assert [r.accuracy.accuracies for r in again] == [r.accuracy.accuracies for r in rows]

    # a cell cut after training (no cell.json) reuses its best/; a new seed trains only its own cells
    monkeypatch.undo()
    calls = _count_training(monkeypatch)
    (cell / "cell.json").unlink()
    grown = run_sweep(_sweep(root, seeds=(0, 1, 2)), progress=False)
    assert len(calls) == 2 * 2 * 2 and {c.n for c in calls} == {2}
    assert len(grown) == 2 * (1 + 12) and (cell / "cell.json").is_file()


def test_sweep_refuses_other_settings_and_foreign_folders(sweep_setup):
    root = sweep_setup
    cfg = _sweep(root, seeds=(0,))
    cfg.lambdas, cfg.max_trains, cfg.experiment.prefill_layers = [0.5], [20], [0]
    run_sweep(cfg, progress=False)
    other = _sweep(root, seeds=(0,), lr=5e-3)
    other.lambdas, other.max_trains, other.experiment.prefill_layers = [0.5], [20], [0]
    with pytest.raises(DepthmuxError, match=r"different lr \(stored 0.001, given 0.005\)"):
        run_sweep(other, progress=False)
    (root / "experiment").mkdir()
    (root / "experiment" / "experiment.json").write_text("{}")
    cfg.out_dir = str(root / "experiment")
    with pytest.raises(DepthmuxError, match="holds files that are not a depthmux run"):  # no marker: not ours
        run_sweep(cfg, progress=False)
    (root / "experiment" / MARKER).write_text("")  # another depthmux run's folder
    with pytest.raises(DepthmuxError, match="holds something other than a sweep"):
        run_sweep(cfg, progress=False)


def test_sweep_cli_bad_lists_are_one_line(capsys):
    for argv, message in [
        (["--lambda", "0,x"], "--lambda must be comma-separated numbers"),
        (["--seeds", "0,0"], "--seeds repeats a value"),
        (["--lambda", "-1"], "--lambda must be a finite number in [0.0, 100.0]"),
        (["--max-train", "-5"], "--max-train sizes must be >= 1"),
    ]:
        with pytest.raises(SystemExit) as code:
            main(["mux", "sweep", "--no-bench", *argv])
        err = capsys.readouterr().err.strip()
        assert code.value.code == 2 and err.count("\n") == 0 and message in err, err


def _row(n, acc, std, seed, lam=0.5, speed=None) -> ResultRow:
    score = GroupedScore(acc, std, 0.0, 0.0, [acc], 2, macro_f1_mean=acc)
    return ResultRow(n, 0, "teacher" if n == 1 else "reversible", score, 0.9, None, None, teacher="probe",
                     dataset="d", lambda_info=None if n == 1 else lam, seed=seed, train_examples=100)  # fmt: skip


def test_aggregate_separates_seed_and_grouping_spread():
    rows = [_row(1, 0.9, 0.0, 0), _row(2, 0.8, 0.02, 0), _row(2, 0.86, 0.04, 1)]
    teacher, mux = aggregate(rows)
    assert teacher.n == 1 and teacher.seeds == 1 and teacher.speedup == 1.0
    assert mux.seeds == 2 and mux.accuracy == pytest.approx(0.83)
    assert mux.seed_std == pytest.approx(0.0424264, abs=1e-6) and mux.grouping_std == pytest.approx(0.03)
    assert mux.gap == pytest.approx(-0.07)


def test_pareto_front_keeps_only_undominated_points():
    def point(speed, acc):
        return SweepPoint("d", 100, 2, 0, "reversible", 0.5, 1, acc, 0, 0, acc, 0.9, "probe", speed, 2.0)

    points = [point(1.0, 0.9), point(1.5, 0.85), point(1.4, 0.8), point(2.0, 0.7), point(1.9, 0.75), point(None, 1)]
    assert [(p.speedup, p.accuracy) for p in pareto_front(points)] == [(1.0, 0.9), (1.5, 0.85), (1.9, 0.75),
                                                                         (2.0, 0.7)]  # fmt: skip


def test_small_data_recipe_more_epochs_and_early_stopping(tiny_backbone):
    import torch

    from depthmux.multiplexing import FeatureCache, LinearProbeHead, MultiplexedClassifier, MuxConfig
    from depthmux.training.mux import MAX_EPOCHS, train_mux

    assert MuxTrainConfig(epochs=3, batch_size=32, min_steps=600).planned_epochs(500) == 38  # 16 steps an epoch
    assert MuxTrainConfig(epochs=3, batch_size=32, min_steps=600).planned_epochs(100_000) == 3
    assert MuxTrainConfig(epochs=3, batch_size=32, min_steps=10**6).planned_epochs(64) == MAX_EPOCHS

    torch.manual_seed(0)
    d = tiny_backbone.hidden_size

    def cache(m):
        return FeatureCache({0: [torch.randn(4, d) for _ in range(m)]}, torch.randn(m, d), torch.randint(0, 2, (m,)))

    model = MultiplexedClassifier(MuxConfig(n=2, readout="mean"), tiny_backbone, LinearProbeHead(d, 2))
    hist = train_mux(model, cache(16), cache(8), MuxTrainConfig(epochs=40, batch_size=8, patience=2), progress=False)
    assert len(hist["history"]) < 40  # random labels: the validation accuracy stops improving
    assert len(hist["history"]) - hist["best_epoch"] == 2
    # early stopping waits for min_steps: 2 steps an epoch, 20 steps = all 10 planned epochs run
    model = MultiplexedClassifier(MuxConfig(n=2, readout="mean"), tiny_backbone, LinearProbeHead(d, 2))
    cfg = MuxTrainConfig(epochs=1, batch_size=8, patience=1, min_steps=20)
    assert cfg.planned_epochs(16) == 10 and not cfg.stops_early(5, 1, 19) and cfg.stops_early(5, 1, 20)
    hist = train_mux(model, cache(16), cache(8), cfg, progress=False)
    assert len(hist["history"]) == 10


def test_sweep_cli_over_two_glue_tasks(tmp_path, tiny_backbone, capsys):
    tiny_backbone.model.save_pretrained(tmp_path / "bert")
    tiny_backbone.tokenizer.save_pretrained(tmp_path / "bert")
    rng = random.Random(2)
    for folder, header, row in (
        ("SST-2", "sentence\tlabel", lambda i, y: f"{rng.choice(POS if y else NEG)} {rng.choice(FILL)}\t{y}"),
        ("RTE", "index\tsentence1\tsentence2\tlabel",
         lambda i, y: f"{i}\tthe {FILL[i % 8]}\t{'the' if y else 'no'} {FILL[i % 8]}\t"
                      f"{'entailment' if y else 'not_entailment'}"),
    ):  # fmt: skip
        (tmp_path / "glue" / folder).mkdir(parents=True)
        for split, count in (("train", 30), ("dev", 10)):
            lines = [header] + [row(i, i % 2) for i in range(count)]
            (tmp_path / "glue" / folder / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    argv = ["mux", "sweep", "--task", "sst2,rte", "--data-dir", str(tmp_path / "glue"),
            "--model", str(tmp_path / "bert"), "--n", "2", "--seeds", "0", "--max-train", "0", "--epochs", "1",
            "--min-steps", "0", "--patience", "0",
            "--shuffles", "1", "--no-bench", "--out", str(tmp_path / "sweep")]  # fmt: skip
    main(argv)
    assert "| sst2 |" in capsys.readouterr().out
    results = json.loads((tmp_path / "sweep" / "sweep_results.json").read_text())
    assert [(p["dataset"], p["n"]) for p in results["aggregated"]] == [("sst2", 1), ("sst2", 2), ("rte", 1), ("rte", 2)]
    assert (tmp_path / "sweep" / "pareto-sst2-train27.png").is_file()
    assert (tmp_path / "sweep" / "pareto-rte-train27.png").is_file()
