"""One computation: the cached-feature path (training, model selection, `mux eval`, reported
accuracy) and the real inference path (`forward`, `predict`, the benchmark) give the same logits
(SPEC 1.1, last paragraph; issue 7 item 1)."""

from __future__ import annotations

import pytest
import torch

from depthmux.data import ClassificationDataset
from depthmux.multiplexing import (
    LinearProbeHead,
    MultiplexedClassifier,
    MuxConfig,
    TeacherClassifier,
    TeacherConfig,
    build_feature_cache,
)
from depthmux.multiplexing.evaluation import logits_cached, predict_cached

# very different lengths, so that in most groups one slot is padding where its partner is not
TEXTS = [
    "ok",
    "the plot of this film is long and winding and it never quite arrives anywhere at all, sadly",
    "fine",
    "a b c",
    "great acting, weak script, and an ending that nobody asked for",
    "dull",
    "it is what it is",
    "wonderful",
    "the best movie of the year by a wide margin, truly and honestly",
]


def toy(texts: list[str]) -> ClassificationDataset:
    return ClassificationDataset("toy", "dev", texts, [i % 2 for i in range(len(texts))], ["neg", "pos"])


def random_head(d: int, seed: int = 1) -> LinearProbeHead:
    torch.manual_seed(seed)
    head = LinearProbeHead(d, 2)
    torch.nn.init.normal_(head.weight)
    return head


def mux_model(backbone, n: int, l: int, mixer: str = "reversible") -> MultiplexedClassifier:
    model = MultiplexedClassifier(
        MuxConfig(n=n, prefill_layers=l, mixer=mixer, backbone="tiny"), backbone, random_head(backbone.hidden_size)
    )
    torch.manual_seed(2)
    with torch.no_grad():  # larger random adapters, so that any leak between slots shows in the logits
        for p in model.trainable_state_dict().values():
            p.normal_(0, 0.3)
    return model.eval()


@pytest.mark.parametrize("mixer", ["reversible", "vanilla"])
@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("l", [0, 2])
def test_cached_logits_equal_real_logits_for_ragged_groups(tiny_backbone, l, n, mixer):
    model = mux_model(tiny_backbone, n, l, mixer)
    texts = TEXTS[:8]  # 8 inputs: an incomplete last group at N = 3
    cache = build_feature_cache(tiny_backbone, toy(texts), [l])
    cached = logits_cached(model, cache, torch.arange(len(texts)), batch_size=64)
    with torch.no_grad():
        real = model(tiny_backbone.tokenize(texts)).logits
    assert (cached - real).abs().max().item() < 1e-5


@pytest.mark.parametrize("l", [0, 1])
def test_padded_positions_do_not_reach_the_partner(tiny_backbone, l):
    """What the old path got wrong: the real hidden states at padded positions (not the cache's
    zeros) went into f_down and, through the OR mask, into the partner's output."""
    model = mux_model(tiny_backbone, 2, l)
    batch = tiny_backbone.tokenize(["short", "a much longer sentence that pads its partner a lot"])
    hidden = tiny_backbone.prefill(batch, l)
    garbage = hidden + 5.0 * (1 - batch.attention_mask[..., None])  # change only the padded positions
    with torch.no_grad():
        a = model.forward_from_prefill(hidden, batch.attention_mask).logits
        b = model.forward_from_prefill(garbage, batch.attention_mask).logits
    assert torch.equal(a, b)


def test_extra_padding_does_not_change_the_result(tiny_backbone):
    model = mux_model(tiny_backbone, 2, 1)
    batch = tiny_backbone.tokenize(TEXTS[:4])
    hidden = tiny_backbone.prefill(batch, 1)
    longer = torch.cat([hidden, torch.randn(4, 7, hidden.shape[-1])], dim=1)
    mask = torch.cat([batch.attention_mask, torch.zeros(4, 7, dtype=torch.long)], dim=1)
    with torch.no_grad():
        a = model.forward_from_prefill(hidden, batch.attention_mask).logits
        b = model.forward_from_prefill(longer, mask).logits
    assert (a - b).abs().max().item() < 1e-6


@pytest.mark.parametrize("batch_size", [5, 64])
def test_predict_groups_like_the_cached_evaluation(tiny_backbone, batch_size):
    """``predict`` and cached evaluation use batches of whole groups (5 -> 4 at N = 2), so the same
    inputs share a pass on both paths."""
    model = mux_model(tiny_backbone, 2, 1)
    cache = build_feature_cache(tiny_backbone, toy(TEXTS), [1])
    order = torch.arange(len(TEXTS))
    assert torch.equal(model.predict(TEXTS, batch_size=batch_size), predict_cached(model, cache, order, batch_size))


def test_teacher_cached_logits_equal_real_logits(tiny_backbone):
    teacher = TeacherClassifier(TeacherConfig(backbone="tiny"), tiny_backbone, random_head(tiny_backbone.hidden_size))
    cache = build_feature_cache(tiny_backbone, toy(TEXTS), teacher.cache_layers)
    cached = logits_cached(teacher, cache, torch.arange(len(TEXTS)))
    with torch.no_grad():
        real = teacher(tiny_backbone.tokenize(TEXTS)).logits
    assert (cached - real).abs().max().item() < 1e-5
