"""The frozen encoder backbone: layer ranges, read-out, input validation."""

from __future__ import annotations

import pytest
import torch

from depthmux.backbones import load_backbone
from depthmux.errors import DepthmuxError


def test_layer_ranges_compose_to_the_full_model(tiny_backbone):
    batch = tiny_backbone.tokenize(["hello world", ("a premise here", "a hypothesis")][:1] + ["another one, longer"])
    with torch.no_grad():
        full = tiny_backbone.model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, token_type_ids=batch.token_type_ids
        ).last_hidden_state
        h = tiny_backbone.prefill(batch, 1)
        h = tiny_backbone.run_layers(h, batch.attention_mask, 1, 2)
        h = tiny_backbone.run_layers(h, batch.attention_mask, 2, tiny_backbone.num_layers)
    assert (h - full).abs().max().item() < 1e-5


def test_mean_readout_ignores_padding(tiny_backbone):
    short = tiny_backbone.tokenize(["short"])
    padded = tiny_backbone.tokenize(["short", "a much longer sentence with many tokens"])
    a = tiny_backbone.encode(short)[0]
    b = tiny_backbone.encode(padded)[0]
    assert (a - b).abs().max().item() < 1e-5


def test_sentence_pairs_get_segment_ids(tiny_backbone):
    batch = tiny_backbone.tokenize([("is it raining?", "it is raining."), ("who?", "me.")])
    assert batch.token_type_ids is not None and batch.token_type_ids.max().item() == 1


def test_empty_text_is_a_clear_error(tiny_backbone):
    with pytest.raises(DepthmuxError, match="text 1 is empty"):
        tiny_backbone.tokenize(["fine", "   "])
    with pytest.raises(DepthmuxError, match="text 0 is empty"):
        tiny_backbone.tokenize([("", "hypothesis")])


def test_over_long_text_is_a_clear_error(tiny_backbone):
    with pytest.raises(DepthmuxError, match=r"text 1 is too long: \d+ tokens > limit 64"):
        tiny_backbone.tokenize(["ok", "word " * 200])


def test_missing_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(DepthmuxError, match=r"model path not found: .*nowhere"):
        load_backbone(tmp_path / "nowhere")
    with pytest.raises(DepthmuxError, match=r"has no config\.json"):
        load_backbone(tmp_path)


# --- hostile pass (hfix-a)
def test_a_bogus_device_is_a_one_line_error(tmp_path, tokenizer):
    from tiny_families import save_family

    folder = save_family("bert", tmp_path / "tiny-bert", tokenizer)
    with pytest.raises(DepthmuxError, match=r"bad device 'x'") as e:
        load_backbone(folder, device="x")
    assert "\n" not in str(e.value)
