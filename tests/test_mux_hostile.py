"""Issues 20/21, the mux side: what was silently wrong or misleading now refuses with a line that says
what is wrong, or behaves as stated (explicit ``--epochs``, the exploding-loss stop, the busy-machine
warning next to the speedup)."""

from __future__ import annotations

import random

import pytest
import torch

import depthmux.cli.mux as mux_cli
import depthmux.training.mux as training_mux
from depthmux.cli import main
from depthmux.data import ClassificationDataset
from depthmux.data.user_files import read_labelled_file
from depthmux.errors import DepthmuxError
from depthmux.multiplexing import MultiplexedClassifier, MuxConfig
from depthmux.multiplexing.evaluation import BenchResult
from depthmux.multiplexing.features import build_feature_cache
from depthmux.multiplexing.heads import LinearProbeHead
from depthmux.training.mux import MuxTrainConfig, train_mux

ROWS = "".join(f"a fine sentence number {i},{i % 2}\n" for i in range(30))


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = e.code or 0
    return code, capsys.readouterr().err


@pytest.fixture
def files(tmp_path):
    (tmp_path / "train.csv").write_text("text,label\n" + ROWS)
    (tmp_path / "dev.csv").write_text("text,label\n" + ROWS)
    (tmp_path / "folder.csv").mkdir()  # a folder named like a data file
    (tmp_path / "folder").mkdir()
    return tmp_path


@pytest.fixture(scope="module")
def three_class(tmp_path_factory):
    """A checkpoint of a model trained on a three-class CSV (random adapters on the packaged MiniLM)."""
    from depthmux.backbones import load_backbone

    path = tmp_path_factory.mktemp("three") / "three"
    backbone = load_backbone("minilm")
    config = MuxConfig(n=2, task="moods", label_names=["happy", "neutral", "sad"], readout=backbone.readout_mode)
    MultiplexedClassifier(config, backbone, LinearProbeHead(backbone.hidden_size, 3)).save_pretrained(path)
    return path


def _no_work(monkeypatch):
    def reached(self, *args, **kwargs):
        raise AssertionError(f"reached a forward pass ({type(self).__name__})")

    monkeypatch.setattr(torch.nn.Module, "__call__", reached)


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["mux", "train", "--train", "{d}/folder.csv", "--dev", "{d}/dev.csv"], "--train"),
        (["mux", "train", "--train", "{d}/train.csv", "--dev", "{d}/folder.csv"], "--dev"),
        (["mux", "train", "--train", "{d}/train.csv", "--dev", "{d}/dev.csv", "--val", "{d}/folder"], "--val"),
        (["mux", "eval", "{ck}", "--dev", "{d}/folder.csv"], "--dev"),
        (["mux", "bench", "--dev", "{d}/folder"], "--dev"),
    ],
    ids=["train-folder", "dev-folder", "val-folder-no-extension", "eval-dev-folder", "bench-dev-folder"],
)
def test_a_folder_given_as_a_data_file_is_called_a_directory(args, option, files, three_class, capsys, monkeypatch):
    _no_work(monkeypatch)
    monkeypatch.chdir(files)
    out = ["--out", str(files / "o")] if args[1] == "train" else []
    code, err = run_cli([a.format(d=files, ck=three_class) for a in args] + out, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"error: {option} {files}/folder" in err and "is a directory, not a data file" in err, err


@pytest.mark.parametrize("task", ["sst2", "rte", "tweets"])
def test_eval_on_a_task_with_other_labels_names_both_label_sets(task, three_class, capsys, monkeypatch, tmp_path):
    _no_work(monkeypatch)
    code, err = run_cli(["mux", "eval", str(three_class), "--task", task, "--data-dir", str(tmp_path / "none")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "predicts the labels ['happy', 'neutral', 'sad']" in err and f"but {task} has the labels [" in err, err


def test_eval_on_its_own_labels_is_not_refused():
    from depthmux.recipes.mux import _check_task_labels

    _check_task_labels("ck", ["negative", "positive"], "sst2")
    _check_task_labels("ck", ["0", "1"], "sst2")  # as the SST-2 files write them
    _check_task_labels("ck", ["negative", "positive"], "tweets")
    with pytest.raises(DepthmuxError, match="but rte has the labels"):
        _check_task_labels("ck", ["negative", "positive"], "rte")


# ---------------------------------------------------------------------------------------- CSV quotes


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ('text,label\na,1\n"never closed,0\nb,1\nc,0\n', 3),  # to the end of the file
        ('text,label\na,1\n"opens here,1\nb,0\n"closes" here,1\nc,0\n', 3),  # rows 3-5 would merge
        ('text,label\na,1\n"a text\nover two lines",0\n', 3),  # cannot be told from a merge: refused too
    ],
    ids=["unterminated", "stray-then-closed", "field-over-two-lines"],
)
def test_a_csv_quote_that_merges_rows_is_refused_naming_its_line(tmp_path, text, line):
    path = tmp_path / "data.csv"
    path.write_text(text)
    with pytest.raises(DepthmuxError, match=f"data.csv: line {line}: ") as e:
        read_labelled_file(path, ["text"], "label")
    assert "quote" in str(e.value) and "\n" not in str(e.value)


def test_quoted_fields_on_one_line_are_read(tmp_path):
    path = tmp_path / "ok.tsv"
    path.write_text('text\tlabel\n"a, quoted\ttext"\t1\nhe said "hi"\t0\n"x ""y"" z"\t1\n')
    texts, labels = read_labelled_file(path, ["text"], "label")
    assert texts == ["a, quoted\ttext", 'he said "hi"', 'x "y" z'] and labels == ["1", "0", "1"]


# ---------------------------------------------------------------------------------------- --epochs


def _train_config(args: list[str], monkeypatch):
    seen = {}
    monkeypatch.setattr(mux_cli, "_run_experiment", lambda cfg, threads, as_json: seen.update(cfg=cfg))
    main(["mux", "train", *args])
    return seen["cfg"].train


def test_an_explicit_epochs_is_trained_as_given(monkeypatch):
    train = _train_config(["--epochs", "1"], monkeypatch)
    assert train.epochs == 1 and train.min_steps == 0 and train.planned_epochs(64) == 1
    default = _train_config([], monkeypatch)  # no --epochs: 3, raised on small data up to 600 steps
    assert default.epochs == 3 and default.min_steps == 600 and default.planned_epochs(64) == 50
    both = _train_config(["--epochs", "1", "--min-steps", "10"], monkeypatch)  # asked for both: raised
    assert both.planned_epochs(64) == 5


# ---------------------------------------------------------------------------------------- training


WORDS = ["good", "bad", "great", "awful", "fine", "boring", "fun", "dull", "movie", "plot"]


def _toy(n: int, seed: int) -> ClassificationDataset:
    rng = random.Random(seed)
    texts = [" ".join(rng.choices(WORDS, k=rng.randint(2, 6))) for _ in range(n)]
    labels = [int(any(w in t for w in ("good", "great", "fine", "fun"))) for t in texts]
    return ClassificationDataset("toy", "train", texts, labels, ["neg", "pos"])


@pytest.fixture
def tiny_run(tiny_backbone):
    torch.manual_seed(0)
    model = MultiplexedClassifier(
        MuxConfig(n=2, prefill_layers=0, backbone="tiny"), tiny_backbone, LinearProbeHead(tiny_backbone.hidden_size, 2)
    )
    caches = build_feature_cache(tiny_backbone, _toy(32, 0), [0]), build_feature_cache(tiny_backbone, _toy(8, 1), [0])
    return model, caches


def test_an_exploding_loss_stops_the_run_and_nothing_is_saved_as_best(tiny_run, tmp_path, monkeypatch):
    model, (train, val) = tiny_run
    real, calls = training_mux.revmux_loss, []

    def exploding(*args):
        loss, parts = real(*args)
        calls.append(1)
        return (loss * 1e4 if len(calls) >= 4 else loss), parts  # finite, but 10^4 times its start

    monkeypatch.setattr(training_mux, "revmux_loss", exploding)
    with pytest.raises(DepthmuxError, match=r"loss exploded to .* at epoch 1 step 4, over 100x its first value"):
        train_mux(model, train, val, MuxTrainConfig(epochs=2, batch_size=4), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "best").exists()


def test_a_raised_epoch_count_is_said_before_training(tiny_run, tmp_path, capsys):
    model, (train, val) = tiny_run
    cfg = MuxTrainConfig(epochs=1, batch_size=16, min_steps=4, save_every=0)
    hist = train_mux(model, train, val, cfg, progress=True)
    err = capsys.readouterr().err
    assert len(hist["history"]) == 2
    assert "2 epochs, raised from --epochs 1 by --min-steps 4 on 32 examples" in err


@pytest.mark.parametrize(("option", "value"), [("tau", 1e-4), ("tau", 11.0), ("lambda_info", 101.0)])
def test_ranges_that_cannot_train_are_refused(option, value):
    with pytest.raises(DepthmuxError, match="must be a finite number in"):
        MuxTrainConfig(**{option: value}).validate()
    MuxTrainConfig(tau=1e-3, lambda_info=100.0).validate()  # the ends are allowed


# ---------------------------------------------------------------------------------------- busy machine


def _bench(**kw) -> BenchResult:
    values = dict(
        teacher_samples_per_s=100.0, mux_samples_per_s=150.0, speedup=1.5, speedup_min=1.45, speedup_max=1.55,
        ceiling=1.71, fraction_of_ceiling=0.88, n=2, prefill_layers=1, num_layers=6, batch_size=64, samples=512,
        repetitions=5, threads=1, device="cpu", load_avg=1.2, cores=2,
    )  # fmt: skip
    return BenchResult(**(values | kw))


def test_the_speed_line_warns_on_a_busy_machine():
    from depthmux.multiplexing.evaluation import GroupedScore
    from depthmux.recipes.reports import ResultRow, results_markdown, row_line

    assert _bench().busy() is None  # idle, tight spread
    assert "load 3.4 on 2 cores" in _bench(load_avg=3.4).busy()
    assert "repetitions spread 1.07-1.60x" in _bench(speedup_min=1.07, speedup_max=1.6).busy()
    assert _bench(load_avg=None, cores=None).busy() is None  # an older result without the load
    score = GroupedScore(0.8, 0.01, 0.8, 0.01, [0.8], 1)
    row = ResultRow(2, 1, "reversible", score, 0.81, _bench(load_avg=3.4), "x")
    assert "speedup 1.50x (ceiling 1.71x) [warning: busy machine (load 3.4 on 2 cores)" in row_line(row)
    assert "warning: N=2 l=1 reversible: busy machine" in results_markdown([row], "tweets")
    assert "warning" not in row_line(ResultRow(2, 1, "reversible", score, 0.81, _bench(), "x"))


def test_the_main_job_times_on_one_thread_and_restores_the_setting(tiny_run):
    from depthmux.multiplexing.evaluation import benchmark
    from depthmux.recipes.mux import QUICKSTART

    assert QUICKSTART.bench_threads == 1 and QUICKSTART.bench_repetitions == 10
    model, _ = tiny_run
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        result = benchmark(model.teacher(), model, _toy(8, 2).texts, 4, 2, progress=False, threads=1)
        assert result.threads == 1 and torch.get_num_threads() == 2
        assert result.cores >= 1 and result.repetitions == 2
    finally:
        torch.set_num_threads(before)
