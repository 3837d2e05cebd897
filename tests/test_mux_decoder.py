"""RevMUX on decoder-only backbones (LLaMA family): left-aligned composites, read-out at the last
real token, the verbalizer head, prompts, and the same cached/real computation as encoders."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from depthmux.backbones import load_backbone
from depthmux.data import ClassificationDataset
from depthmux.errors import DepthmuxError
from depthmux.multiplexing import (
    TASK_VERBALIZERS,
    LinearProbeHead,
    MultiplexedClassifier,
    MuxConfig,
    TeacherClassifier,
    TeacherConfig,
    VerbalizerHead,
    build_feature_cache,
    load_classifier,
)
from depthmux.multiplexing.evaluation import logits_cached
from depthmux.multiplexing.heads import task_verbalization
from tiny_families import DECODER_FAMILIES, save_family, tiny_backbone_of

TEXTS = [
    "ok",
    "the plot of this film is long and winding and it never quite arrives anywhere at all",
    "fine",
    "great acting, weak script",
    "dull",
    "it is what it is, I suppose",
    "wonderful",
]
WORDS = [" negative", " positive"]


def mux_model(backbone, n: int, l: int, head=None) -> MultiplexedClassifier:
    head = head or VerbalizerHead.from_backbone(backbone, WORDS)
    config = MuxConfig(
        n=n,
        prefill_layers=l,
        backbone=backbone.name,
        readout="last",
        prompt=backbone.prompt,
        label_names=["neg", "pos"],
    )
    model = MultiplexedClassifier(config, backbone, head)
    torch.manual_seed(2)
    with torch.no_grad():  # larger random adapters, so that any leak between slots shows in the logits
        for p in model.trainable_state_dict().values():
            p.normal_(0, 0.3)
    return model.eval()


def test_align_moves_padding_left_keeping_token_order(tokenizer):
    backbone = tiny_backbone_of("llama", tokenizer)
    hidden = torch.arange(2 * 4, dtype=torch.float).view(2, 4, 1)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]])
    aligned, aligned_mask = backbone.align(hidden, mask)
    assert aligned_mask.tolist() == [[0, 1, 1], [1, 1, 1]]  # cut to the longest input, last tokens line up
    assert aligned[0, 1:, 0].tolist() == [0.0, 1.0] and aligned[1, :, 0].tolist() == [4.0, 5.0, 6.0]


@pytest.mark.parametrize("n", [2, 3, 4, 6, 8])
def test_pipeline_roundtrip_with_identity_body_reads_each_last_token(tokenizer, n):
    """With an identity body, demux(mux(down(h))) at the group's last position == down(h) at each
    input's own last real token, in input order, for ragged lengths and an incomplete last group."""
    backbone = tiny_backbone_of("llama", tokenizer)
    backbone.run_layers = lambda hidden, mask, start, end: hidden
    backbone.output_states = lambda hidden, mask: (hidden, mask)
    model = mux_model(backbone, n, 1, LinearProbeHead(48, 2))
    model.up, model.head = nn.Identity(), nn.Identity()
    torch.manual_seed(0)
    B, S = 2 * n + 1, 7
    hidden = torch.randn(B, S, 48)
    mask = (torch.arange(S)[None] < torch.randint(1, S + 1, (B,))[:, None]).long()
    with torch.no_grad():
        _, recovered = model.forward_from_prefill(hidden, mask)
        expected = backbone.pool(model.down(hidden), mask)
    assert recovered.shape == (B, 48 // n)
    assert (recovered - expected).abs().max().item() < 1e-5


def test_every_slots_last_token_sits_at_the_groups_last_position(tokenizer):
    backbone = tiny_backbone_of("llama", tokenizer)
    seen = []
    run = backbone.run_layers
    backbone.run_layers = lambda hidden, mask, start, end: seen.append(mask.clone()) or run(hidden, mask, start, end)
    model = mux_model(backbone, 2, 1)
    batch = backbone.tokenize(TEXTS[:4])
    with torch.no_grad():
        model(batch)
    group_mask = seen[-1]  # the composite's mask: OR of left-aligned slot masks
    lengths = batch.attention_mask.sum(-1).view(2, 2).amax(-1)
    expected = (torch.arange(group_mask.shape[1])[None] >= group_mask.shape[1] - lengths[:, None]).long()
    assert torch.equal(group_mask, expected)


@pytest.mark.parametrize("family", DECODER_FAMILIES)
@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("l", [0, 2])
def test_cached_logits_equal_real_logits(tokenizer, family, n, l):
    backbone = tiny_backbone_of(family, tokenizer)
    model = mux_model(backbone, n, l)
    data = ClassificationDataset("toy", "dev", TEXTS, [i % 2 for i in range(len(TEXTS))], ["neg", "pos"])
    cache = build_feature_cache(backbone, data, [l])
    with torch.no_grad():
        real = model(backbone.tokenize(TEXTS)).logits
        # a group of long inputs in the same batch pads every other group: it changes nothing
        more_padding = model(backbone.tokenize(TEXTS[:6] + ["word " * 40] * n)).logits[:6]
    cached = logits_cached(model, cache, torch.arange(len(TEXTS)))
    assert (cached - real).abs().max().item() < 1e-5
    assert (more_padding - real[:6]).abs().max().item() < 1e-5
    teacher = model.teacher()
    with torch.no_grad():
        assert (
            logits_cached(teacher, cache, torch.arange(len(TEXTS))) - teacher(backbone.tokenize(TEXTS)).logits
        ).abs().max().item() < 1e-5


@pytest.mark.parametrize("family", DECODER_FAMILIES)
def test_verbalizer_teacher_is_the_lm_head_at_the_last_real_token(tokenizer, family):
    """Teacher (N = 1) logits == the causal LM's own next-token logits of the label words after the
    prompt, at each input's last real token."""
    backbone = tiny_backbone_of(family, tokenizer, prompt=TASK_VERBALIZERS["sst2"].prompt)
    model = mux_model(backbone, 2, 1)
    teacher = model.teacher()
    assert isinstance(teacher, TeacherClassifier) and teacher.head is model.head and teacher.body is backbone
    batch = backbone.tokenize(TEXTS)
    ids = model.head.token_ids
    assert ids == [tokenizer.convert_tokens_to_ids(w.strip()) for w in WORDS]
    with torch.no_grad():
        lm_logits = backbone.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        last = batch.attention_mask.sum(-1) - 1
        expected = lm_logits[torch.arange(len(TEXTS)), last][:, ids]
        assert (teacher(batch).logits - expected).abs().max().item() < 1e-4


def test_prompt_is_applied_before_tokenisation(tokenizer):
    backbone = tiny_backbone_of("llama", tokenizer, prompt="Review: {text}\nSentiment:")
    batch = backbone.tokenize(["a fine film"])
    assert batch.input_ids[0].tolist() == tokenizer("Review: a fine film\nSentiment:")["input_ids"]
    with pytest.raises(DepthmuxError, match=r"prompt .* is for one sentence, but the task gives pairs"):
        backbone.tokenize([("premise", "hypothesis")])
    plain = tiny_backbone_of("llama", tokenizer)
    assert plain.tokenize([("a", "b")]).input_ids[0].tolist() == tokenizer("a\nb")["input_ids"]


def test_label_word_of_several_tokens_is_one_line(tokenizer):
    backbone = tiny_backbone_of("llama", tokenizer)
    with pytest.raises(DepthmuxError) as err:
        VerbalizerHead.from_backbone(backbone, [" negative", " unremarkableness"])
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("verbalizer label word ' unremarkableness' is ")
    assert "must be exactly one token" in message
    with pytest.raises(DepthmuxError, match="share a token"):
        VerbalizerHead.from_backbone(backbone, [" good", "good"])


def test_an_encoder_has_no_verbalizer(tokenizer):
    backbone = tiny_backbone_of("bert", tokenizer)
    with pytest.raises(DepthmuxError, match="has no language-model head: a verbalizer needs a decoder-only"):
        VerbalizerHead.from_backbone(backbone, WORDS)


def test_verbalizer_checkpoint_reloads_from_the_folder_with_its_prompt(tmp_path, tokenizer):
    folder = save_family("llama", tmp_path / "llama", tokenizer)
    prompt = TASK_VERBALIZERS["sst2"].prompt
    backbone = load_backbone(folder, prompt=prompt)
    model = mux_model(backbone, 2, 1)
    model.save_pretrained(tmp_path / "ckpt")
    assert not (tmp_path / "ckpt" / "head.safetensors").exists()  # the verbalizer has no tensors of its own
    state = json.loads((tmp_path / "ckpt" / "state.json").read_text())
    assert state["head"] == {"kind": "verbalizer", "label_words": WORDS, "token_ids": model.head.token_ids}
    assert state["config"]["prompt"] == prompt and state["config"]["backbone"] == str(folder.resolve())
    reloaded = load_classifier(tmp_path / "ckpt")  # loads the backbone from the folder, with the prompt
    assert reloaded.body.prompt == prompt
    with torch.no_grad():
        assert torch.equal(reloaded(reloaded.body.tokenize(TEXTS)).logits, model(backbone.tokenize(TEXTS)).logits)


def test_config_and_backbone_prompts_must_agree(tokenizer):
    backbone = tiny_backbone_of("llama", tokenizer, prompt="Q: {text}\nA:")
    with pytest.raises(DepthmuxError, match=r"the config's prompt None differs from the backbone's 'Q: \{text\}"):
        TeacherClassifier(TeacherConfig(backbone="tiny", readout="last"), backbone, LinearProbeHead(48, 2))


def test_verbalizations_for_builtin_tasks_and_users_label_names(tokenizer):
    assert task_verbalization("sst2") == TASK_VERBALIZERS["sst2"]
    assert task_verbalization("rte", ["not_entailment", "entailment"]).label_words == (" false", " true")
    own = task_verbalization("my.csv", ["negative", "neutral", "positive"])
    assert own.prompt == "{text}\nAnswer:" and own.label_words == (" negative", " neutral", " positive")
    assert task_verbalization("pairs.csv", ["no", "yes"], pairs=True).prompt == "{text_a}\n{text_b}\nAnswer:"
    backbone = tiny_backbone_of("llama", tokenizer, prompt=own.prompt)
    assert VerbalizerHead.from_backbone(backbone, own.label_words).num_labels == 3
    with pytest.raises(DepthmuxError, match="verbalizer label word ' unremarkableness' is"):
        VerbalizerHead.from_backbone(backbone, task_verbalization("x.csv", ["fine", "unremarkableness"]).label_words)
    with pytest.raises(DepthmuxError, match="task 'sst2' has 3 labels, its verbalizer 2 words"):
        task_verbalization("sst2", ["a", "b", "c"])
