"""The two classifiers (teacher, multiplexed) over one TaskHead interface; checkpoints of both
round-trip; corrupt checkpoints and unsupported backbones are one line."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import RobertaConfig, RobertaModel

from depthmux.backbones import load_backbone
from depthmux.cli import main
from depthmux.errors import DepthmuxError
from depthmux.multiplexing import (
    FrozenBackboneClassifier,
    LinearProbeHead,
    MultiplexedClassifier,
    MuxConfig,
    TaskHead,
    TeacherClassifier,
    TeacherConfig,
    load_classifier,
)
from depthmux.utils.checkpoint import save_checkpoint

TEXTS = ["a good movie", "bad", "the plot was thin but the acting was great", "fine", "awful, just awful"]


def head(d: int) -> LinearProbeHead:
    torch.manual_seed(1)
    h = LinearProbeHead(d, 2)
    torch.nn.init.normal_(h.weight)
    return h


def models(backbone, n=2, l=1):
    mux = MultiplexedClassifier(
        MuxConfig(n=n, prefill_layers=l, backbone="tiny", task="toy"), backbone, head(backbone.hidden_size)
    )
    return mux.teacher(), mux


def test_two_classes_share_backbone_and_head(tiny_backbone):
    teacher, mux = models(tiny_backbone)
    assert isinstance(teacher, TeacherClassifier) and isinstance(mux, MultiplexedClassifier)
    assert teacher.head is mux.head and teacher.body is mux.body
    assert teacher.trainable_state_dict() == {} and mux.trainable_state_dict()
    assert (teacher.group_size, mux.group_size) == (1, 2)
    assert isinstance(teacher.config, TeacherConfig) and not isinstance(teacher.config, MuxConfig)


def test_n_1_multiplexed_is_refused(tiny_backbone):
    with pytest.raises(DepthmuxError, match=r"N = 1 is the teacher.* >= 2, got 1"):
        MultiplexedClassifier(MuxConfig(n=1), tiny_backbone, head(tiny_backbone.hidden_size))


def test_head_and_labels_must_agree(tiny_backbone):
    with pytest.raises(DepthmuxError, match="the head predicts 2 labels but the config names 3"):
        TeacherClassifier(TeacherConfig(label_names=["a", "b", "c"]), tiny_backbone, head(tiny_backbone.hidden_size))


@pytest.mark.parametrize("which", ["teacher", "mux"])
def test_save_load_round_trip_gives_identical_predictions(tiny_backbone, tmp_path, which):
    model = dict(zip(("teacher", "mux"), models(tiny_backbone, n=3), strict=True))[which]
    model.save_pretrained(tmp_path / which, {"note": 1})
    reloaded = type(model).from_pretrained(tmp_path / which, tiny_backbone)
    assert type(reloaded) is type(model) and reloaded.config == model.config
    assert torch.equal(model.predict(TEXTS), reloaded.predict(TEXTS))
    with torch.no_grad():
        batch = tiny_backbone.tokenize(TEXTS)
        assert torch.equal(model(batch).logits, reloaded(batch).logits)
    assert type(load_classifier(tmp_path / which, tiny_backbone)) is type(model)
    state = json.loads((tmp_path / which / "state.json").read_text())
    assert state["head"] == {"kind": "linear_probe", "d_model": 48, "num_labels": 2} and state["note"] == 1


def test_loading_the_wrong_class_is_one_line(tiny_backbone, tmp_path):
    teacher, _ = models(tiny_backbone)
    teacher.save_pretrained(tmp_path / "t")
    with pytest.raises(DepthmuxError, match="holds a TeacherClassifier checkpoint, not a MultiplexedClassifier"):
        MultiplexedClassifier.from_pretrained(tmp_path / "t", tiny_backbone)
    assert isinstance(FrozenBackboneClassifier.from_pretrained(tmp_path / "t", tiny_backbone), TeacherClassifier)


def _edit_state(path, **changes):
    state = json.loads((path / "state.json").read_text())
    for key, value in changes.items():
        state["config"][key] = value
    (path / "state.json").write_text(json.dumps(state))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"bogus": 1}, r"config has unknown key\(s\) \['bogus'\]"),
        ({"n": 4}, "its tensors do not match its config"),
        ({"n": "two"}, r"N .* must be an integer >= 2, got 'two'"),
        ({"mixer": "vanilla"}, "adapter tensors do not match the config"),
        ({"label_names": ["x"]}, "label_names must be >= 2 distinct strings"),
    ],
)
def test_corrupt_checkpoint_config_is_one_line(tiny_backbone, tmp_path, changes, message):
    _, mux = models(tiny_backbone)
    mux.save_pretrained(tmp_path / "m")
    _edit_state(tmp_path / "m", **changes)
    with pytest.raises(DepthmuxError, match=f"corrupt checkpoint .*m: {message}") as err:
        MultiplexedClassifier.from_pretrained(tmp_path / "m", tiny_backbone)
    assert "\n" not in str(err.value)


def test_format_1_checkpoints_still_load(tiny_backbone, tmp_path):
    """Checkpoints written before the teacher/multiplexed split (one class, n == 1 for the teacher)."""
    _, mux = models(tiny_backbone)
    old = {
        "n": 1,
        "prefill_layers": 0,
        "mixer": "reversible",
        "backbone": "tiny",
        "readout": "mean",
        "num_labels": 2,
        "task": "toy",
        "label_names": ["0", "1"],
    }
    save_checkpoint(
        tmp_path / "t", {"head": mux.head.state_dict()}, {"format_version": 1, "kind": "depthmux-mux", "config": old}
    )
    teacher = load_classifier(tmp_path / "t", tiny_backbone)
    assert isinstance(teacher, TeacherClassifier)
    assert torch.equal(teacher.predict(TEXTS), mux.teacher().predict(TEXTS))


class FixedMatrixHead(TaskHead):
    """A head with no tensors of its own (as a verbalizer over a frozen LM head will be)."""

    kind = "fixed_matrix"

    def __init__(self, d: int) -> None:
        super().__init__()
        self.num_labels = 2
        self.matrix = torch.eye(2, d)

    def forward(self, readout):
        return readout @ self.matrix.T

    def description(self):
        return {"kind": self.kind}

    @classmethod
    def from_description(cls, description, backbone):
        return cls(backbone.hidden_size)


def test_a_tensorless_head_fits_the_interface(tiny_backbone):
    mux = MultiplexedClassifier(MuxConfig(n=2, backbone="tiny"), tiny_backbone, FixedMatrixHead(48))
    with torch.no_grad():
        assert mux(tiny_backbone.tokenize(TEXTS)).logits.shape == (5, 2)
    assert mux.teacher().predict(TEXTS).shape == (5,)


def _folder(tmp_path, model_type: str | None):
    folder = tmp_path / (model_type or "none")
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": model_type} if model_type else {}))
    return folder


@pytest.mark.parametrize(
    "model_type, message",
    [
        ("gpt2", r"is a gpt2 model \(decoder-only\), which mux cannot run layer by layer; mux supports: bert, roberta"),
        ("depthmux_recursive", r"is a depthmux_recursive model \(decoder-only\)"),
        ("bart", r"is a bart model \(encoder-decoder\)"),
        ("wombat", r"is a 'wombat' model, unknown to mux; mux supports: bert"),
        (None, "config.json has no model_type"),
    ],
)
def test_unsupported_backbones_are_one_line(tmp_path, model_type, message):
    with pytest.raises(DepthmuxError, match=message):
        load_backbone(_folder(tmp_path, model_type))


def test_real_gpt2_folder_given_to_mux_cli_is_one_line(tmp_path, capsys):
    """LLaMA-family decoders are supported now (tests/test_mux_decoder.py); GPT-2 is not."""
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4)).save_pretrained(tmp_path / "gpt2")
    capsys.readouterr()  # drop transformers' save progress bar
    with pytest.raises(SystemExit) as exit_:
        main(["mux", "bench", "--model", str(tmp_path / "gpt2"), "--samples", "4"])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1
    assert "is a gpt2 model (decoder-only), which mux cannot run layer by layer" in err


def test_roberta_folder_loads_through_the_registry(tmp_path, tokenizer):
    torch.manual_seed(0)
    cfg = RobertaConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=70,
        pad_token_id=0,
    )
    RobertaModel(cfg, add_pooling_layer=False).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    backbone = load_backbone(tmp_path)
    batch = backbone.tokenize(TEXTS)
    with torch.no_grad():
        full = backbone.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
        split = backbone.run_layers(backbone.prefill(batch, 1), batch.attention_mask, 1, 2)
    assert backbone.readout_mode == "cls" and (full - split).abs().max().item() < 1e-5
