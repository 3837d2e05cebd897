"""The packaged SmolLM2-135M as a RevMUX backbone (marked slow: dequantised from GGUF once, then
cached): layer ranges compose to the model's own forward, the verbalizer teacher is the LM's own
next-token logits of the label words, and the multiplexed path equals its cached computation."""

from __future__ import annotations

import pytest
import torch

from depthmux.backbones import HFDecoderBackbone, load_backbone
from depthmux.data import ClassificationDataset
from depthmux.multiplexing import TASK_VERBALIZERS, MultiplexedClassifier, MuxConfig, VerbalizerHead
from depthmux.multiplexing.evaluation import logits_cached
from depthmux.multiplexing.features import build_feature_cache

pytestmark = pytest.mark.slow

TEXTS = ["a charming and often affecting journey", "the plot is thin", "bad", "an utterly dull, lifeless film"]


@pytest.fixture(scope="module")
def smollm2():
    return load_backbone("smollm2", prompt=TASK_VERBALIZERS["sst2"].prompt)


def test_layer_ranges_and_verbalizer_match_the_lm(smollm2):
    assert isinstance(smollm2, HFDecoderBackbone) and (smollm2.num_layers, smollm2.hidden_size) == (30, 576)
    batch = smollm2.tokenize(TEXTS)
    head = VerbalizerHead.from_backbone(smollm2, list(TASK_VERBALIZERS["sst2"].label_words))
    with torch.no_grad():
        out = smollm2.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        split = smollm2.run_layers(smollm2.prefill(batch, 15), batch.attention_mask, 15, 30)
        states, _ = smollm2.output_states(split, batch.attention_mask)
        full = smollm2.model.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
        real = batch.attention_mask.bool()
        assert (states[real] - full[real]).abs().max().item() < 1e-3
        last = batch.attention_mask.sum(-1) - 1
        expected = out.logits[torch.arange(len(TEXTS)), last][:, head.token_ids]
        assert (head(smollm2.encode(batch)) - expected).abs().max().item() < 1e-3


def test_multiplexed_path_equals_its_cached_computation(smollm2):
    head = VerbalizerHead.from_backbone(smollm2, list(TASK_VERBALIZERS["sst2"].label_words))
    config = MuxConfig(n=4, prefill_layers=15, backbone="smollm2", readout="last", prompt=smollm2.prompt)
    model = MultiplexedClassifier(config, smollm2, head).eval()
    cache = build_feature_cache(smollm2, ClassificationDataset("toy", "dev", TEXTS, [1, 0, 0, 0], ["0", "1"]), [15])
    with torch.no_grad():
        real = model(smollm2.tokenize(TEXTS)).logits
    assert (logits_cached(model, cache, torch.arange(len(TEXTS))) - real).abs().max().item() < 1e-3
