"""The RevMUX recipe end to end on a tiny BERT folder and tiny GLUE-format files: results on disk,
a resumed run reuses the trained teacher and adapters, `mux eval` reproduces the reported accuracy
(the cached path is the real path), a resume with other settings is refused."""

from __future__ import annotations

import json
import random

import pytest
import torch

from depthmux.cli import main
from depthmux.errors import DepthmuxError
from depthmux.multiplexing import MultiplexedClassifier, TeacherClassifier
from depthmux.recipes.mux import ExperimentConfig, MuxEvalConfig, MuxTrainConfig, evaluate_checkpoint, run_experiment

POS, NEG = ["good", "great", "fun", "fine"], ["bad", "awful", "dull", "boring"]
FILL = ["the", "movie", "plot", "a", "was", "really", "and", "acting", "long", "story", "it", "of"]


def _tsv(rng: random.Random, rows: int) -> str:
    lines = ["sentence\tlabel"]
    for _ in range(rows):
        y = rng.randint(0, 1)
        words = rng.choices(FILL, k=rng.randint(1, 14)) + [rng.choice(POS if y else NEG)]
        rng.shuffle(words)
        lines.append(f"{' '.join(words)}\t{y}")
    return "\n".join(lines) + "\n"


@pytest.fixture
def tiny_setup(tmp_path, tiny_backbone):
    tiny_backbone.model.save_pretrained(tmp_path / "bert")
    tiny_backbone.tokenizer.save_pretrained(tmp_path / "bert")
    rng = random.Random(0)
    (tmp_path / "glue" / "SST-2").mkdir(parents=True)
    (tmp_path / "glue" / "SST-2" / "train.tsv").write_text(_tsv(rng, 60))
    (tmp_path / "glue" / "SST-2" / "dev.tsv").write_text(_tsv(rng, 21))
    return tmp_path


def config(root, **train) -> ExperimentConfig:
    return ExperimentConfig(
        task="sst2",
        data_dir=str(root / "glue"),
        model=str(root / "bert"),
        ns=[2, 3],
        prefill_layers=[0, 1],
        max_train=None,
        max_validation=10,
        shuffles=2,
        bench=False,
        out_dir=str(root / "run"),
        train=MuxTrainConfig(epochs=1, batch_size=12, **train),
    )


def test_experiment_end_to_end_resume_and_eval(tiny_setup, capsys):
    rows = run_experiment(config(tiny_setup), progress=False)
    out = tiny_setup / "run"
    assert [(r.n, r.prefill_layers) for r in rows] == [(1, 3), (2, 0), (2, 1), (3, 0), (3, 1)]
    assert json.loads((out / "results.json").read_text())["rows"][1]["n"] == 2
    assert (out / "results.md").is_file() and (out / "experiment.json").is_file()
    assert isinstance(TeacherClassifier.from_pretrained(out / "teacher"), TeacherClassifier)

    # mux eval on the reported split gives the reported accuracy: one computation
    best = out / "n3-l1-reversible" / "best"
    report = evaluate_checkpoint(
        MuxEvalConfig(str(best), data_dir=str(tiny_setup / "glue"), shuffles=2), progress=False
    )
    assert report.mux.accuracies == rows[4].accuracy.accuracies
    assert report.teacher.accuracy_mean == rows[0].accuracy.accuracy_mean

    # and predict on the raw dev texts (grouped in order) agrees with the cached path
    model = MultiplexedClassifier.from_pretrained(best)
    from depthmux.data import load_task
    from depthmux.multiplexing import build_feature_cache
    from depthmux.multiplexing.evaluation import predict_cached

    dev = load_task("sst2", "dev", tiny_setup / "glue")
    cache = build_feature_cache(model.body, dev, model.cache_layers)
    assert torch.equal(model.predict(dev.texts), predict_cached(model, cache, torch.arange(len(dev))))

    # resume: same settings reuse everything; another lr is refused, naming it
    same = config(tiny_setup)
    same.resume = True
    again = run_experiment(same, progress=False)
    assert [r.accuracy.accuracies for r in again] == [r.accuracy.accuracies for r in rows]
    other = config(tiny_setup, lr=5e-3)
    other.resume = True
    with pytest.raises(DepthmuxError, match=r"different lr \(stored 0.001, given 0.005\)"):
        run_experiment(other, progress=False)


def test_cli_eval_of_a_teacher_checkpoint(tiny_setup, capsys):
    cfg = config(tiny_setup)
    cfg.ns = [1]
    run_experiment(cfg, progress=False)
    capsys.readouterr()
    main(["mux", "eval", str(tiny_setup / "run" / "teacher"), "--data-dir", str(tiny_setup / "glue"), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["mux"] is None and 0.0 <= report["teacher"]["accuracy_mean"] <= 1.0


def test_train_sample_without_every_label_is_refused_before_caching(tiny_setup, monkeypatch):
    import depthmux.recipes.mux as recipe

    monkeypatch.setattr(recipe, "build_feature_cache", lambda *a, **k: pytest.fail("reached the feature cache"))
    cfg = config(tiny_setup)
    cfg.max_train = 1
    with pytest.raises(DepthmuxError, match=r"the train sample \(1 examples\) has no example of label\(s\) \['\w+'\]"):
        run_experiment(cfg, progress=False)
