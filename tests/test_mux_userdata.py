"""Users' own data end to end through the CLI: a five-class CSV trains and evaluates (label names from
the file, the run named after it, macro F1 and class counts reported), `mux eval --dev FILE` gives the
reported accuracy back, pairs from JSON lines with a validation file, and the fine-tuned teacher."""

from __future__ import annotations

import json
import random

import pytest

from depthmux.cli import main
from depthmux.multiplexing import MultiplexedClassifier, TeacherClassifier
from depthmux.recipes.mux import ExperimentConfig, MuxTrainConfig, run_experiment

CLASSES = {"sports": "goal", "politics": "vote", "science": "atom", "music": "song", "food": "bread"}
FILL = ["the", "a", "report", "about", "new", "today", "and", "it", "was", "of"]


def _rows(rng: random.Random, count: int) -> list[tuple[str, str]]:
    rows = []
    for i in range(count):
        label = list(CLASSES)[i % len(CLASSES)]
        words = rng.choices(FILL, k=rng.randint(2, 8)) + [CLASSES[label]] * 2
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


def _write_csv(path, rows):
    path.write_text("headline,topic\n" + "".join(f"{t},{y}\n" for t, y in rows))
    return path


@pytest.fixture
def user_files(tmp_path, tiny_backbone):
    tiny_backbone.model.save_pretrained(tmp_path / "bert")
    tiny_backbone.tokenizer.save_pretrained(tmp_path / "bert")
    rng = random.Random(0)
    _write_csv(tmp_path / "news.csv", _rows(rng, 80))
    _write_csv(tmp_path / "news_dev.csv", _rows(rng, 25))
    return tmp_path


def test_five_class_csv_end_to_end_through_the_cli(user_files, capsys):
    root = user_files
    argv = ["mux", "train", "--model", str(root / "bert"), "--train", str(root / "news.csv"),
            "--dev", str(root / "news_dev.csv"), "--text-column", "headline", "--label-column", "topic",
            "--val-split", "0.2", "--n", "2", "--batch-size", "16", "--shuffles", "2",
            "--no-bench", "--out", str(root / "run")]  # fmt: skip
    main(argv)
    printed = capsys.readouterr().out
    assert "RevMUX on news" in printed and "macro F1" in printed and "sports 5" in printed

    results = json.loads((root / "run" / "results.json").read_text())
    assert results["dataset"] == "news" and results["teacher"] == "probe"
    assert results["label_names"] == sorted(CLASSES)
    teacher, mux = results["rows"]
    assert teacher["dataset"] == "news" and teacher["teacher"] == "probe" and teacher["train_examples"] == 64
    assert teacher["accuracy"]["support"] == [5, 5, 5, 5, 5] and len(mux["accuracy"]["per_class_f1"]) == 5
    assert teacher["accuracy"]["accuracy_mean"] > 0.4  # five keyword classes: chance is 0.2
    markdown = (root / "run" / "results.md").read_text()
    assert "teacher: probe" in markdown and "macro F1 %" in markdown and "food 5" in markdown

    # the default recipe on small data (no --epochs): 3 epochs raised toward 600 steps (4 an epoch), early
    # stopping after 3
    train_config = json.loads((root / "run" / "n2-l0-reversible" / "train_config.json").read_text())["train"]
    assert (train_config["min_steps"], train_config["patience"]) == (600, 3)
    log = (root / "run" / "n2-l0-reversible" / "log.jsonl").read_text().splitlines()
    assert len(log) >= 4 and (len(log) == 50 or len(log) - mux["best_epoch"] == 3)

    best = root / "run" / "n2-l0-reversible" / "best"
    model = MultiplexedClassifier.from_pretrained(best)
    assert model.config.task == "news" and model.config.label_names == sorted(CLASSES)

    main(["mux", "eval", str(best), "--dev", str(root / "news_dev.csv"), "--text-column", "headline",
          "--label-column", "topic", "--shuffles", "2", "--json"])  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    assert report["mux"]["accuracies"] == mux["accuracy"]["accuracies"]
    assert report["task"] == "news_dev" and report["examples"] == 25


def test_eval_of_a_user_data_checkpoint_needs_its_file(user_files, capsys):
    root = user_files
    cfg = _config(root, ns=[1])
    run_experiment(cfg, progress=False)
    capsys.readouterr()
    with pytest.raises(SystemExit) as code:
        main(["mux", "eval", str(root / "run" / "teacher")])
    err = capsys.readouterr().err.strip()
    assert code.value.code == 2 and err.count("\n") == 0
    assert "trained on the user's data set 'news': evaluate it with --dev FILE" in err


def _config(root, **overrides) -> ExperimentConfig:
    values = dict(
        train_file=str(root / "news.csv"),
        dev_file=str(root / "news_dev.csv"),
        text_columns=["headline"],
        label_column="topic",
        model=str(root / "bert"),
        ns=[2],
        prefill_layers=[1],
        shuffles=2,
        bench=False,
        out_dir=str(root / "run"),
        train=MuxTrainConfig(epochs=1, batch_size=16),
    )
    values.update(overrides)
    return ExperimentConfig(**values)


def test_pairs_from_json_lines_with_a_validation_file(tmp_path, tiny_backbone):
    tiny_backbone.model.save_pretrained(tmp_path / "bert")
    tiny_backbone.tokenizer.save_pretrained(tmp_path / "bert")
    rng = random.Random(1)

    def write(name, count):
        with open(tmp_path / name, "w") as f:
            for _ in range(count):
                y = rng.randint(0, 1)
                a = " ".join(rng.choices(FILL, k=3))
                f.write(json.dumps({"premise": a, "hypothesis": a if y else "no " + a, "entails": y}) + "\n")

    write("nli.jsonl", 40)
    write("nli_val.jsonl", 10)
    write("nli_dev.jsonl", 12)
    cfg = ExperimentConfig(
        train_file=str(tmp_path / "nli.jsonl"), dev_file=str(tmp_path / "nli_dev.jsonl"),
        val_file=str(tmp_path / "nli_val.jsonl"), text_columns=["premise", "hypothesis"], label_column="entails",
        model=str(tmp_path / "bert"), ns=[2], shuffles=1, bench=False, out_dir=str(tmp_path / "run"),
        train=MuxTrainConfig(epochs=1, batch_size=8),
    )  # fmt: skip
    rows = run_experiment(cfg, progress=False)
    assert rows[0].train_examples == 40 and rows[1].dataset == "nli"  # the validation file is not taken from train
    assert json.loads((tmp_path / "run" / "results.json").read_text())["label_names"] == ["0", "1"]


def test_finetuned_teacher_is_saved_frozen_and_reported(user_files, monkeypatch):
    root = user_files
    cfg = _config(root, teacher="finetune")
    cfg.finetune.epochs = 1
    cfg.finetune.lr = 1e-3
    rows = run_experiment(cfg, progress=False)
    out = root / "run"
    assert [r.teacher for r in rows] == ["finetune", "finetune"]
    state = json.loads((out / "teacher" / "state.json").read_text())
    assert state["finetune"]["best_epoch"] == 1 and len(state["finetune"]["history"]) == 1
    # the checkpoints name the fine-tuned backbone, which differs from the original one
    teacher = TeacherClassifier.from_pretrained(out / "teacher")
    assert teacher.config.backbone == str((out / "teacher-backbone").resolve())
    from depthmux.backbones import load_backbone

    original, tuned = load_backbone(str(root / "bert")), teacher.body
    assert not all(p.requires_grad for p in tuned.parameters())
    changed = [
        name for (name, a), (_, b) in zip(original.state_dict().items(), tuned.state_dict().items(), strict=True)
        if a.is_floating_point() and not (a == b).all()
    ]  # fmt: skip
    assert changed, "fine-tuning left the backbone unchanged"
    mux = MultiplexedClassifier.from_pretrained(out / "n2-l1-reversible" / "best")
    assert mux.config.backbone == teacher.config.backbone
    assert "teacher: finetune" in (out / "results.md").read_text()

    # a resumed run reuses the fine-tuned backbone and the teacher instead of tuning again
    import depthmux.recipes.mux as recipe

    again = _config(root, teacher="finetune", resume=True)
    again.finetune.epochs, again.finetune.lr = 1, 1e-3
    monkeypatch.setattr(recipe, "finetune_teacher", lambda *a, **k: pytest.fail("fine-tuned again on resume"))
    rows2 = run_experiment(again, progress=False)
    assert [r.accuracy.accuracies for r in rows2] == [r.accuracy.accuracies for r in rows]


def test_resume_of_a_run_from_before_the_new_settings(user_files):
    root = user_files
    run_experiment(_config(root, ns=[1]), progress=False)
    path = root / "run" / "experiment.json"
    stored = json.loads(path.read_text())
    for key in ("teacher", "finetune", "val_split", "text_columns"):
        del stored[key]
    del stored["train"]["patience"], stored["train"]["min_steps"]
    path.write_text(json.dumps(stored))
    rows = run_experiment(_config(root, ns=[1], resume=True), progress=False)  # keys it lacks are not compared
    assert rows[0].teacher == "probe"
    from depthmux.errors import DepthmuxError

    with pytest.raises(DepthmuxError, match=r"different label_column \(stored topic, given label\)"):
        run_experiment(_config(root, ns=[1], resume=True, label_column="label"), progress=False)
