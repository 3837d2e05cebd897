"""Real packaged MiniLM and real SST-2 files (marked slow; the CI-marked ones run in CI)."""

from __future__ import annotations

import random

import pytest
import torch

from depthmux.backbones import load_backbone
from depthmux.data import load_task
from depthmux.multiplexing import MultiplexedClassifier, MuxConfig, TeacherClassifier, TeacherConfig, train_probe
from depthmux.multiplexing.evaluation import evaluate_grouped
from depthmux.multiplexing.features import build_feature_cache
from depthmux.training.mux import MuxTrainConfig, train_mux

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def minilm():
    return load_backbone()


@pytest.mark.ci
def test_packaged_minilm_layer_ranges_and_pooling(minilm):
    assert (minilm.num_layers, minilm.hidden_size, minilm.readout_mode) == (6, 384, "mean")
    batch = minilm.tokenize(["a charming and often affecting journey", "the plot is thin"])
    with torch.no_grad():
        full = minilm.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
        split = minilm.run_layers(minilm.prefill(batch, 3), batch.attention_mask, 3, 6)
    assert (split - full).abs().max().item() < 1e-4
    emb = minilm.encode(batch)
    sim = torch.nn.functional.cosine_similarity(emb[0], emb[1], dim=0)
    assert -1.0 <= sim.item() < 0.9  # distinct sentences, distinct embeddings


@pytest.mark.ci
def test_short_sst2_run_learns_and_stays_frozen(minilm, glue):
    rng = random.Random(0)
    train = load_task("sst2", "train", glue)
    train = train.subset(sorted(rng.sample(range(len(train)), 1200)))
    val = load_task("sst2", "validation", glue).subset(list(range(300)))
    dev = load_task("sst2", "dev", glue).subset(list(range(200)))
    before = {k: v.clone() for k, v in minilm.state_dict().items()}
    caches = [build_feature_cache(minilm, d, [3]) for d in (train, val, dev)]
    head, _ = train_probe(caches[0].teacher, caches[0].labels, caches[1].teacher, caches[1].labels, 2)
    teacher = TeacherClassifier(TeacherConfig(), minilm, head)
    teacher_acc = evaluate_grouped(teacher, caches[2], progress=False).accuracy_mean
    assert teacher_acc > 0.7
    torch.manual_seed(0)
    model = MultiplexedClassifier(MuxConfig(n=2, prefill_layers=3), minilm, head)
    train_mux(model, caches[0], caches[1], MuxTrainConfig(epochs=2, lr=2e-3), progress=False)
    score = evaluate_grouped(model, caches[2], shuffles=3, progress=False)
    assert score.accuracy_mean > 0.6  # well above chance after a minute of training
    assert all(torch.equal(v, before[k]) for k, v in minilm.state_dict().items())
