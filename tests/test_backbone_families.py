"""Every backbone family run layer by layer reproduces the model's own forward (< 1e-5); folders load
through the registry (eager attention where a family has no SDPA); N that does not divide the
hidden size, unsupported families and read-outs that do not fit a family are one line."""

from __future__ import annotations

import json

import pytest
import torch

from depthmux.backbones import (
    BACKBONE_FAMILIES,
    DebertaV2Backbone,
    HFDecoderBackbone,
    HFEncoderBackbone,
    HFSeq2SeqBackbone,
    ModernBertBackbone,
    MPNetBackbone,
    load_backbone,
)
from depthmux.errors import DepthmuxError
from depthmux.multiplexing import LinearProbeHead, MultiplexedClassifier, MuxConfig
from tiny_families import ALL_FAMILIES, DECODER_FAMILIES, ENCODER_FAMILIES, save_family, tiny_backbone_of

TEXTS = ["ok", "the plot was thin but the acting was great, truly", "fine film", "a b c d e f g h i j k"]
PAIRS = [("is it raining today?", "it is raining."), ("who?", "me, and nobody else at all")]
TAKES_SEGMENTS = ("bert", "roberta", "electra", "deberta-v2")


def reference_readout(family: str, backbone, batch) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The Hugging Face model's own forward: (read-out [B, d], last states [B, S, d] or None for T5)."""
    ids, mask = batch.input_ids, batch.attention_mask
    if family == "t5":
        start = torch.zeros(len(ids), 1, dtype=torch.long)
        out = backbone.model(input_ids=ids, attention_mask=mask, decoder_input_ids=start, output_hidden_states=True)
        return out.decoder_hidden_states[-1][:, 0], None
    if family in DECODER_FAMILIES:
        states = backbone.model.model(input_ids=ids, attention_mask=mask).last_hidden_state
    elif family in TAKES_SEGMENTS:
        states = backbone.model(input_ids=ids, attention_mask=mask, token_type_ids=batch.token_type_ids)[0]
    else:
        states = backbone.model(input_ids=ids, attention_mask=mask)[0]
    return backbone.pool(states, mask), states


@pytest.mark.parametrize("family", ALL_FAMILIES)
@pytest.mark.parametrize("l", [0, 1, 2])
def test_layer_by_layer_equals_the_models_own_forward(tokenizer, family, l):
    backbone = tiny_backbone_of(family, tokenizer)
    for texts in (TEXTS, PAIRS):
        batch = backbone.tokenize(texts)
        mask = batch.attention_mask
        with torch.no_grad():
            expected, expected_states = reference_readout(family, backbone, batch)
            hidden = backbone.run_layers(backbone.prefill(batch, l), mask, l, backbone.num_layers)
            ours = backbone.readout(hidden, mask)
            states, _ = backbone.output_states(hidden, mask)
        assert (ours - expected).abs().max().item() < 1e-5
        assert (ours - backbone.encode(batch)).abs().max().item() < 1e-5
        if expected_states is not None:  # every real position, not only the read-out
            real = mask.bool()
            assert (states[real] - expected_states[real]).abs().max().item() < 1e-5


def test_the_families_are_really_different(tokenizer):
    """The checks above would pass vacuously if the families' extra inputs did nothing: leaving out
    MPNet's relative position bias, ModernBERT's final norm or Qwen2's sliding window changes the result."""
    mpnet = tiny_backbone_of("mpnet", tokenizer)
    batch = mpnet.tokenize(TEXTS)
    with torch.no_grad():
        full = mpnet.encode(batch)
        hidden = mpnet.embed(batch)
        mask = mpnet.attention_mask(hidden, batch.attention_mask)
        for layer in mpnet.layers:  # what a plain `layer(hidden, mask)` loop computes
            hidden = layer(hidden, mask)[0]
        assert (mpnet.pool(hidden, batch.attention_mask) - full).abs().max().item() > 1e-3
        modern = tiny_backbone_of("modernbert", tokenizer)
        h = modern.run_layers(modern.embed(batch), batch.attention_mask, 0, modern.num_layers)
        assert (modern.pool(h, batch.attention_mask) - modern.encode(batch)).abs().max().item() > 1e-3
        qwen2 = tiny_backbone_of("qwen2", tokenizer)  # its sliding-window layers (window 3) see less
        full = qwen2.encode(batch)
        qwen2._layer_window = lambda index: None
        assert (qwen2.encode(batch) - full).abs().max().item() > 1e-3


@pytest.mark.parametrize("family", ENCODER_FAMILIES + ["t5"])
def test_right_padded_batches_pass_align_unchanged(tokenizer, family):
    """Encoders (and T5's encoder) mix right-padded slots: ``align`` only cuts padding, bit for bit,
    so the packaged MiniLM path computes exactly what it did before decoders existed."""
    backbone = tiny_backbone_of(family, tokenizer)
    batch = backbone.tokenize(TEXTS)
    hidden = torch.randn(*batch.input_ids.shape, 48)
    hidden = torch.cat([hidden, torch.randn(len(TEXTS), 3, 48)], 1)  # extra padding columns
    mask = torch.cat([batch.attention_mask, torch.zeros(len(TEXTS), 3, dtype=torch.long)], 1)
    aligned, aligned_mask = backbone.align(hidden, mask)
    S = int(mask.sum(-1).max())
    assert torch.equal(aligned, hidden[:, :S]) and torch.equal(aligned_mask, mask[:, :S])


@pytest.mark.parametrize(
    "family, cls, attention",
    [
        ("bert", HFEncoderBackbone, "sdpa"),
        ("roberta", HFEncoderBackbone, "sdpa"),
        ("electra", HFEncoderBackbone, "sdpa"),
        ("mpnet", MPNetBackbone, "eager"),  # no SDPA implementation in transformers: eager, not a crash
        ("deberta-v2", DebertaV2Backbone, "eager"),
        ("modernbert", ModernBertBackbone, "sdpa"),
        ("llama", HFDecoderBackbone, "sdpa"),
        ("qwen2", HFDecoderBackbone, "sdpa"),
        ("t5", HFSeq2SeqBackbone, "sdpa"),
    ],
)
def test_folders_load_through_the_registry(tmp_path, tokenizer, family, cls, attention):
    backbone = load_backbone(save_family(family, tmp_path / family, tokenizer))
    assert type(backbone) is cls and backbone.model.config._attn_implementation == attention
    assert backbone.name == str((tmp_path / family).resolve()) and backbone.num_layers == 3
    assert backbone.readout_mode == cls.readout_modes[0] if family not in ENCODER_FAMILIES else "cls"
    batch = backbone.tokenize(TEXTS)
    reference = tiny_backbone_of(family, tokenizer)  # the same weights (same seed), built in memory
    with torch.no_grad():
        assert (backbone.encode(batch) - reference.encode(batch)).abs().max().item() < 1e-5


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_n_that_does_not_divide_the_hidden_size_is_one_line(tokenizer, family):
    backbone = tiny_backbone_of(family, tokenizer)
    head = LinearProbeHead(48, 2)
    for n in (5, 7):
        config = MuxConfig(n=n, backbone=backbone.name, readout=backbone.readout_mode)
        with pytest.raises(DepthmuxError, match=f"N={n} does not divide the hidden size 48") as err:
            MultiplexedClassifier(config, backbone, head)
        assert "\n" not in str(err.value)
    for n in (2, 3, 4, 6, 8):  # every N the hidden size allows builds and runs
        model = MultiplexedClassifier(
            MuxConfig(n=n, backbone=backbone.name, readout=backbone.readout_mode), backbone, head
        )
        with torch.no_grad():
            assert model(backbone.tokenize(TEXTS + TEXTS)).logits.shape == (8, 2)


def _config_only(tmp_path, model_type: str | None):
    folder = tmp_path / (model_type or "none")
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": model_type} if model_type else {}))
    return folder


@pytest.mark.parametrize(
    "model_type, message",
    [
        ("gpt2", r"is a gpt2 model \(decoder-only\), which mux cannot run layer by layer; mux supports: bert, "),
        ("depthmux_recursive", r"is a depthmux_recursive model \(decoder-only\), which mux cannot run"),
        ("bart", r"is a bart model \(encoder-decoder\), which mux cannot run layer by layer"),
        ("distilbert", r"is a distilbert model \(encoder\), which mux cannot run layer by layer"),
        ("wombat", r"is a 'wombat' model, unknown to mux; mux supports: bert, roberta"),
        (None, "config.json has no model_type"),
    ],
)
def test_unsupported_families_are_refused_with_one_line(tmp_path, model_type, message):
    with pytest.raises(DepthmuxError, match=message) as err:
        load_backbone(_config_only(tmp_path, model_type))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "family, readout, fits",
    [("llama", "cls", "last"), ("llama", "mean", "last"), ("t5", "cls", "answer"), ("bert", "last", "cls, mean")],
)
def test_a_read_out_that_does_not_fit_the_family_is_one_line(tmp_path, tokenizer, family, readout, fits):
    """E.g. a decoder-only model given the encoder-only option ``--readout cls``."""
    folder = save_family(family, tmp_path / family, tokenizer, layers=1)
    kind = BACKBONE_FAMILIES[family].kind
    with pytest.raises(
        DepthmuxError,
        match=rf"is a {family} model \({kind}\): readout '{readout}' is not one of "
        rf"its read-outs \({fits}\)",
    ):
        load_backbone(folder, readout=readout)


def test_every_supported_family_is_tested():
    supported = {t for t, f in BACKBONE_FAMILIES.items() if f.backbone_class is not None}
    same_code = {"xlm-roberta": "roberta", "camembert": "roberta", "mistral": "llama", "qwen3": "llama", "mt5": "t5"}
    assert {same_code.get(t, t) for t in supported} == set(ALL_FAMILIES)


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_token_counts_equal_what_tokenize_counts(tokenizer, family):
    """The server's cheap count (the Rust encoder) = the real batch's lengths, also right after a padded
    call left padding state in the tokenizer, and with a prompt template."""
    for prompt in (None, "Review: {text}\nSentiment:"):
        backbone = tiny_backbone_of(family, tokenizer, prompt=prompt)
        expected = backbone.tokenize(TEXTS).attention_mask.sum(-1).tolist()
        assert backbone.token_counts(TEXTS) == expected
        assert backbone.token_counts(TEXTS[:1]) == expected[:1]  # alone: no padding to the batch's longest
