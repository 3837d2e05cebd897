"""RevMUX on an encoder-decoder (tiny random-initialised T5; no pretrained T5 ships offline): mux
inside the encoder at layer l, the decoder runs on the composite, demux at the decoder's answer
position (SPEC 1.6). Exact round trip through the pipeline, cached == real, verbalizer == the LM
head, and a short training run that learns a synthetic task at N = 2."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from depthmux.data import ClassificationDataset
from depthmux.multiplexing import (
    LinearProbeHead,
    MultiplexedClassifier,
    MuxConfig,
    TeacherClassifier,
    TeacherConfig,
    VerbalizerHead,
    build_feature_cache,
    train_probe,
)
from depthmux.multiplexing.evaluation import evaluate_grouped, logits_cached
from depthmux.training.mux import MuxTrainConfig, train_mux
from tiny_families import tiny_backbone_of

TEXTS = ["ok", "the plot was long and winding and never arrives", "fine", "great acting, weak script", "dull"]


class IdentityBlock(nn.Module):
    """An encoder block that returns its input (keeping the block's attention, which owns the bias table)."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.layer = block.layer

    def forward(self, hidden, mask=None, position_bias=None):
        return (hidden,)


class CopyFirstEncoderState(nn.Module):
    """A 'decoder' whose answer-position output is the encoder output at position 0."""

    def forward(self, input_ids, encoder_hidden_states, encoder_attention_mask, use_cache=False):
        return SimpleNamespace(last_hidden_state=encoder_hidden_states[:, :1])


def t5_model(backbone, n: int, l: int, head=None) -> MultiplexedClassifier:
    config = MuxConfig(n=n, prefill_layers=l, backbone=backbone.name, readout="answer", label_names=["neg", "pos"])
    head = head or VerbalizerHead.from_backbone(backbone, ["negative", "positive"])
    model = MultiplexedClassifier(config, backbone, head)
    torch.manual_seed(2)
    with torch.no_grad():
        for p in model.trainable_state_dict().values():
            p.normal_(0, 0.3)
    return model.eval()


@pytest.mark.parametrize("n", [2, 3, 4, 6, 8])
def test_round_trip_through_the_encoder_decoder_pipeline_is_exact(tokenizer, n):
    """Identity encoder blocks and norm, a decoder that copies the encoder's first position: the
    demultiplexed answer-position vector of each input is ``f_down`` of its own first embedding."""
    backbone = tiny_backbone_of("t5", tokenizer)
    t5 = backbone.model
    t5.encoder.block = nn.ModuleList(IdentityBlock(b) for b in t5.encoder.block)
    t5.encoder.final_layer_norm = nn.Identity()
    t5.decoder = CopyFirstEncoderState()
    model = t5_model(backbone, n, 1, LinearProbeHead(48, 2))
    model.up, model.head = nn.Identity(), nn.Identity()
    texts = (TEXTS * 3)[: 2 * n + 1]  # an incomplete last group
    batch = backbone.tokenize(texts)
    with torch.no_grad():
        _, recovered = model(batch)
        expected = model.down(backbone.embed(batch))[:, 0]  # [B, d/N]
        composite = model.mixer.mux(expected[:n, None])  # the first group's composite, [1, d]
    assert recovered.shape == (len(texts), 48 // n)
    assert (recovered - expected).abs().max().item() < 1e-5
    assert (composite[0] - expected[:n].flatten()).abs().max().item() > 1e-2  # the composite really mixes


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("l", [0, 2])
def test_cached_logits_equal_real_logits(tokenizer, n, l):
    backbone = tiny_backbone_of("t5", tokenizer)
    model = t5_model(backbone, n, l)
    data = ClassificationDataset("toy", "dev", TEXTS, [0, 1, 0, 1, 0], ["neg", "pos"])
    cache = build_feature_cache(backbone, data, [l])
    with torch.no_grad():
        real = model(backbone.tokenize(TEXTS)).logits
    assert (logits_cached(model, cache, torch.arange(len(TEXTS))) - real).abs().max().item() < 1e-5


def test_verbalizer_teacher_is_the_lm_head_at_the_answer_position(tokenizer):
    backbone = tiny_backbone_of("t5", tokenizer)
    teacher = t5_model(backbone, 2, 1).teacher()
    batch = backbone.tokenize(TEXTS)
    start = torch.zeros(len(TEXTS), 1, dtype=torch.long)
    with torch.no_grad():
        lm = backbone.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, decoder_input_ids=start)
        expected = lm.logits[:, 0, teacher.head.token_ids]
        assert (teacher(batch).logits - expected).abs().max().item() < 1e-5


POSITIVE, NEGATIVE, FILLER = ["good", "great", "fun", "fine"], ["bad", "awful", "dull", "boring"], ["the", "a", "movie"]


def synthetic(n: int, seed: int, split: str) -> ClassificationDataset:
    """Label 1 iff the sentence holds a positive word (each holds exactly one sentiment word)."""
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(n):
        y = rng.randint(0, 1)
        words = rng.choices(FILLER, k=rng.randint(1, 5)) + [rng.choice(POSITIVE if y else NEGATIVE)]
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(y)
    return ClassificationDataset("toy", split, texts, labels, ["neg", "pos"])


def test_short_training_learns_a_synthetic_task_at_n2(tokenizer):
    backbone = tiny_backbone_of("t5", tokenizer, layers=2)
    train, val, dev = (
        build_feature_cache(backbone, synthetic(k, s, name), [1])
        for k, s, name in ((400, 0, "train"), (100, 1, "validation"), (200, 2, "dev"))
    )
    head, _ = train_probe(train.teacher, train.labels, val.teacher, val.labels, 2)
    teacher = TeacherClassifier(TeacherConfig(backbone=backbone.name, readout="answer"), backbone, head)
    assert evaluate_grouped(teacher, dev, progress=False).accuracy_mean > 0.9
    torch.manual_seed(0)
    model = MultiplexedClassifier(
        MuxConfig(n=2, prefill_layers=1, backbone=backbone.name, readout="answer"), backbone, head
    )
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    train_mux(model, train, val, MuxTrainConfig(epochs=5, lr=3e-3, lambda_info=0.5), progress=False)
    assert evaluate_grouped(model, dev, shuffles=3, progress=False).accuracy_mean > 0.75  # chance: 0.5
    assert all(torch.equal(v, before[k]) for k, v in backbone.state_dict().items())
