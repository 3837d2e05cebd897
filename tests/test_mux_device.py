"""RevMUX on another device (``--device``): one-line errors for a device this machine lacks, the
device recorded with every benchmark, and, where a CUDA device exists, the same computation there
as on the CPU (the CUDA tests are skipped elsewhere)."""

from __future__ import annotations

import pytest
import torch

from depthmux.data import ClassificationDataset
from depthmux.errors import DepthmuxError
from depthmux.multiplexing import LinearProbeHead, MultiplexedClassifier, MuxConfig, build_feature_cache
from depthmux.multiplexing.evaluation import benchmark, evaluate_grouped, logits_cached
from depthmux.recipes.mux import ExperimentConfig, MuxBenchConfig, MuxTrainConfig, run_experiment
from depthmux.utils.checks import check_device
from test_mux_cli import run_cli
from test_mux_recipe import tiny_setup  # noqa: F401  (a fixture)
from tiny_families import tiny_backbone_of

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
TEXTS = ["good fun", "a long and dull story of the plot", "fine", "awful acting", "really great", "boring", "ok"]


@pytest.mark.parametrize("value", ["banana", "cuda:x", "gpu"])
def test_bad_device_names_are_one_line(value):
    with pytest.raises(DepthmuxError, match="bad --device"):
        check_device("--device", value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_one_line_exit_2(capsys):
    code, _, err = run_cli(["mux", "bench", "--device", "cuda", "--samples", "4"], capsys)
    assert code == 2 and err.strip() == "error: --device cuda: no CUDA device is visible to torch here (use cpu)"
    with pytest.raises(DepthmuxError, match="no CUDA device"):
        ExperimentConfig(device="cuda:0").validate()
    with pytest.raises(DepthmuxError, match="no CUDA device"):
        MuxBenchConfig(device="cuda").validate()


def _model(backbone, n: int = 2, l: int = 1) -> MultiplexedClassifier:
    cfg = MuxConfig(n=n, prefill_layers=l, backbone=backbone.name, readout=backbone.readout_mode)
    torch.manual_seed(0)
    return MultiplexedClassifier(cfg, backbone, LinearProbeHead(backbone.hidden_size, 2)).eval()


def test_benchmark_records_its_device(tokenizer):
    backbone = tiny_backbone_of("bert", tokenizer)
    model = _model(backbone)
    r = benchmark(model.teacher(), model, TEXTS, batch_size=4, repetitions=1, progress=False)
    assert r.device == "cpu" and r.as_dict()["device"] == "cpu"


@cuda
@pytest.mark.parametrize("family", ["bert", "llama"])
def test_cuda_real_and_cached_paths_match_the_cpu(family, tokenizer):
    data = ClassificationDataset("toy", "dev", TEXTS, [1, 0, 1, 0, 1, 0, 1], ["neg", "pos"])
    cpu_model = _model(tiny_backbone_of(family, tokenizer))
    gpu_backbone = tiny_backbone_of(family, tokenizer).to("cuda")
    gpu_model = MultiplexedClassifier(cpu_model.config, gpu_backbone, LinearProbeHead(gpu_backbone.hidden_size, 2))
    gpu_model.load_state_dict(cpu_model.state_dict())
    gpu_model.head.load_state_dict(cpu_model.head.state_dict())
    assert next(gpu_model.parameters()).is_cuda and gpu_backbone.tokenize(TEXTS).input_ids.is_cuda
    batch = cpu_model.body.tokenize(TEXTS)
    want = cpu_model(batch).logits
    torch.testing.assert_close(gpu_model(gpu_backbone.tokenize(TEXTS)).logits.cpu(), want, atol=1e-4, rtol=1e-4)
    order = torch.arange(len(TEXTS))
    gpu_cache = build_feature_cache(gpu_backbone, data, [1])
    assert gpu_cache.teacher.is_cuda and not gpu_cache.labels.is_cuda
    got = logits_cached(gpu_model, gpu_cache, order)
    torch.testing.assert_close(got, logits_cached(cpu_model, build_feature_cache(cpu_model.body, data, [1]), order))
    assert evaluate_grouped(gpu_model, gpu_cache, 2, progress=False).shuffles == 2
    r = benchmark(gpu_model.teacher(), gpu_model, TEXTS, batch_size=4, repetitions=1, progress=False)
    assert r.device.startswith("cuda: ")


@cuda
def test_cuda_experiment_trains_and_reloads_on_the_cpu(tiny_setup):  # noqa: F811
    root = tiny_setup
    cfg = ExperimentConfig(
        task="sst2",
        data_dir=str(root / "glue"),
        model=str(root / "bert"),
        ns=[2],
        prefill_layers=[1],
        max_train=None,
        max_validation=10,
        shuffles=2,
        bench=False,
        out_dir=str(root / "run"),
        device="cuda",
        train=MuxTrainConfig(epochs=1, batch_size=12),
    )
    rows = run_experiment(cfg, progress=False)
    assert len(rows) == 2 and all(0.0 <= r.accuracy.accuracy_mean <= 1.0 for r in rows)
    reloaded = MultiplexedClassifier.from_pretrained(root / "run" / "n2-l1-reversible" / "best")
    assert not next(reloaded.parameters()).is_cuda


def test_eval_refuses_a_missing_device_before_loading(capsys, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, _, err = run_cli(["mux", "eval", str(tmp_path / "none"), "--device", "cuda"], capsys)
    assert code == 2 and "--device cuda: no CUDA device" in err


@cuda
def test_place_moves_backbone_head_and_adapters(tokenizer):
    model = _model(tiny_backbone_of("bert", tokenizer)).place("cuda")
    assert model.body.device.type == "cuda" and all(p.is_cuda for p in model.parameters())
    assert model.teacher()(model.body.tokenize(TEXTS)).logits.is_cuda
