"""Training: resume equals an uninterrupted run; checkpoints reload to identical predictions."""

from __future__ import annotations

import random

import pytest
import torch

from depthmux.data import ClassificationDataset
from depthmux.errors import DepthmuxError
from depthmux.multiplexing import LinearProbeHead, MultiplexedClassifier, MuxConfig
from depthmux.multiplexing.evaluation import evaluate_grouped
from depthmux.multiplexing.features import build_feature_cache
from depthmux.training.mux import MuxTrainConfig, train_mux

WORDS = ["good", "bad", "great", "awful", "fine", "boring", "fun", "dull", "movie", "plot", "the", "a"]


def toy_data(n: int, seed: int) -> ClassificationDataset:
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(n):
        words = rng.choices(WORDS, k=rng.randint(2, 8))
        texts.append(" ".join(words))
        labels.append(int(sum(w in ("good", "great", "fine", "fun") for w in words) >= 1))
    return ClassificationDataset("toy", "train", texts, labels, ["neg", "pos"])


@pytest.fixture
def caches(tiny_backbone):
    return (
        build_feature_cache(tiny_backbone, toy_data(48, 0), [0, 1]),
        build_feature_cache(tiny_backbone, toy_data(16, 1), [0, 1]),
    )


def new_model(backbone, n=2):
    torch.manual_seed(0)
    head = LinearProbeHead(backbone.hidden_size, 2)
    torch.nn.init.normal_(head.weight)
    return MultiplexedClassifier(MuxConfig(n=n, prefill_layers=1, backbone="tiny"), backbone, head)


def test_feature_cache_matches_direct_prefill(tiny_backbone):
    data = toy_data(5, 3)
    cache = build_feature_cache(tiny_backbone, data, [1])
    batch = tiny_backbone.tokenize(data.texts[2:3])
    direct = tiny_backbone.prefill(batch, 1)[0]
    assert (cache.prefill[1][2] - direct).abs().max().item() < 1e-5
    assert (cache.teacher[2] - tiny_backbone.encode(batch)[0]).abs().max().item() < 1e-5


def test_resume_continues_to_the_same_result(tiny_backbone, caches, tmp_path):
    train, val = caches
    cfg = MuxTrainConfig(epochs=3, batch_size=8, lr=1e-2, save_every=4)
    full = new_model(tiny_backbone)
    train_mux(full, train, val, cfg, tmp_path / "full", progress=False)

    interrupted = new_model(tiny_backbone)
    out = train_mux(interrupted, train, val, cfg, tmp_path / "cut", progress=False, stop_after_steps=9)
    assert out["stopped_at"] == 9  # mid-epoch 2
    resumed = new_model(tiny_backbone)
    train_mux(resumed, train, val, cfg, tmp_path / "cut", resume=True, progress=False)
    a, b = full.trainable_state_dict(), resumed.trainable_state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_without_checkpoint_is_a_clear_error(tiny_backbone, caches, tmp_path):
    with pytest.raises(DepthmuxError, match="no checkpoint to resume from"):
        train_mux(new_model(tiny_backbone), *caches, MuxTrainConfig(epochs=1), tmp_path, resume=True, progress=False)


def test_saved_model_reloads_with_identical_predictions(tiny_backbone, caches, tmp_path):
    train, val = caches
    model = new_model(tiny_backbone, n=4)
    train_mux(model, train, val, MuxTrainConfig(epochs=1, batch_size=8), tmp_path, progress=False)
    assert (tmp_path / "best" / "adapters.safetensors").is_file()
    reloaded = MultiplexedClassifier.from_pretrained(tmp_path / "best", tiny_backbone)
    texts = toy_data(10, 7).texts
    assert torch.equal(model.predict(texts), reloaded.predict(texts))
    with torch.no_grad():
        a = model(tiny_backbone.tokenize(texts)).logits
        b = reloaded(tiny_backbone.tokenize(texts)).logits
    assert torch.equal(a, b)


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "state.json").write_text("{not json")
    with pytest.raises(DepthmuxError, match=r"corrupt checkpoint .*state\.json is not valid JSON"):
        MultiplexedClassifier.from_pretrained(tmp_path / "ck")
    with pytest.raises(DepthmuxError, match="checkpoint not found"):
        MultiplexedClassifier.from_pretrained(tmp_path / "missing")


def test_grouped_evaluation_reports_spread_over_groupings(tiny_backbone, caches):
    _, val = caches
    score = evaluate_grouped(new_model(tiny_backbone), val, shuffles=4, progress=False)
    assert score.shuffles == 4 and len(score.accuracies) == 4
    assert 0.0 <= score.accuracy_mean <= 1.0 and score.accuracy_std >= 0.0
