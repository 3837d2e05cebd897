"""RevMUX core: exact inversion, grouping order, dummy padding, masks, frozen backbone."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from depthmux.backbones import EncodedBatch, FrozenBackbone
from depthmux.errors import DepthmuxError
from depthmux.multiplexing import (
    MIXERS,
    LinearProbeHead,
    MultiplexedClassifier,
    MuxConfig,
    ReversibleMultiplexer,
    build_multiplexer,
    speedup_ceiling,
)
from depthmux.multiplexing.losses import info_nce


class IdentityBackbone(FrozenBackbone):
    """A backbone whose layers do nothing: the composite comes back unchanged."""

    readout_mode = "mean"

    def __init__(self, d: int, layers: int = 4) -> None:
        super().__init__()
        self._d, self._layers = d, layers
        self.seen_masks: list[torch.Tensor] = []
        self.name = "identity"

    hidden_size = property(lambda self: self._d)
    num_layers = property(lambda self: self._layers)

    def tokenize(self, texts, max_length=None):
        raise AssertionError("not used")

    def embed(self, batch: EncodedBatch) -> torch.Tensor:
        raise AssertionError("not used")

    def run_layers(self, hidden, attention_mask, start, end):
        self.seen_masks.append(attention_mask.clone())
        return hidden


@pytest.mark.parametrize("n", [2, 3, 4, 8])
def test_reversible_demux_inverts_mux_exactly(n):
    torch.manual_seed(n)
    d = 24 * n
    mixer = ReversibleMultiplexer(n, d)
    slots = torch.randn(n, 5, 7, d // n) * 3
    composite = mixer.mux(slots)
    assert composite.shape == (5, 7, d)
    assert (composite - torch.cat(list(slots), -1)).abs().max() > 1e-2  # it really mixes
    recovered = mixer.demux(composite)
    assert recovered.shape == slots.shape
    assert (recovered - slots).abs().max().item() < 1e-5


def test_n2_matches_the_published_equations():
    torch.manual_seed(0)
    mixer = ReversibleMultiplexer(2, 16)
    F, G = mixer.couplings
    i1, i2 = torch.randn(3, 8), torch.randn(3, 8)
    o1 = i1 + F(i2)
    o2 = i2 + G(o1)
    out = mixer.mux(torch.stack([i1, i2]))
    torch.testing.assert_close(out, torch.cat([o1, o2], -1))  # block layout, not interleaved


@pytest.mark.parametrize("n", [2, 3, 4, 8])
def test_pipeline_roundtrip_with_identity_backbone_keeps_order(n):
    """demux(backbone(mux(down(h)))) == down(h), per input, in input order, with padding."""
    torch.manual_seed(0)
    d = 12 * n
    backbone = IdentityBackbone(d)
    model = MultiplexedClassifier(MuxConfig(n=n, prefill_layers=1, readout="mean"), backbone, LinearProbeHead(d, 2))
    model.up = nn.Identity()  # expose the demultiplexed, pooled slot vectors directly
    model.head = nn.Identity()
    B, S = 2 * n + 1, 6  # not a multiple of n: dummy inputs complete the last group
    hidden = torch.randn(B, S, d)
    lengths = torch.randint(1, S + 1, (B,))
    mask = (torch.arange(S)[None] < lengths[:, None]).long()
    _, recovered = model.forward_from_prefill(hidden, mask)
    expected = backbone.readout(model.down(hidden), mask)
    assert recovered.shape == (B, d // n)
    assert (recovered - expected).abs().max().item() < 1e-5


def test_group_mask_is_or_of_member_masks():
    backbone = IdentityBackbone(8)
    model = MultiplexedClassifier(MuxConfig(n=2, prefill_layers=0), backbone, LinearProbeHead(8, 2))
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0]])
    model.forward_from_prefill(torch.randn(3, 4, 8), mask)
    group_mask = backbone.seen_masks[-1]
    # padding is cut to the longest input; the dummy partner of the last input adds nothing
    assert group_mask.tolist() == [[1, 1, 0], [1, 1, 1]]


@pytest.mark.parametrize("kind", sorted(MIXERS))
def test_every_mixer_has_the_same_interface(kind):
    n, d = 4, 32
    mixer = build_multiplexer(kind, n, d)
    w = mixer.slot_width(d, n)
    composite = mixer.mux(torch.randn(n, 3, 5, w))
    assert composite.shape == (3, 5, d)
    assert mixer.demux(composite).shape == (n, 3, 5, w)


def test_wrong_n_for_hidden_size_is_a_clear_error():
    with pytest.raises(DepthmuxError, match="N=5 does not divide the hidden size 384"):
        ReversibleMultiplexer(5, 384)
    with pytest.raises(DepthmuxError, match="N=5 does not divide the hidden size 8"):
        MultiplexedClassifier(MuxConfig(n=5), IdentityBackbone(8), LinearProbeHead(8, 2))


def test_prefill_layers_out_of_range_is_a_clear_error():
    with pytest.raises(DepthmuxError, match=r"prefill layers l=4 must satisfy 0 <= l < 4"):
        MultiplexedClassifier(MuxConfig(n=2, prefill_layers=4), IdentityBackbone(8), LinearProbeHead(8, 2))


def test_unknown_mixer_is_a_clear_error():
    with pytest.raises(DepthmuxError, match="unknown mixer 'magic'"):
        build_multiplexer("magic", 2, 8)


def test_speedup_ceiling_formula():
    assert speedup_ceiling(12, 0, 2) == pytest.approx(2.0)
    assert speedup_ceiling(12, 6, 2) == pytest.approx(12 / 9)
    assert speedup_ceiling(6, 1, 4) == pytest.approx(6 / 2.25)


def test_info_nce_prefers_the_matching_teacher():
    torch.manual_seed(0)
    teacher = torch.randn(8, 16)
    aligned = info_nce(teacher + 0.01 * torch.randn(8, 16), teacher)
    shuffled = info_nce(teacher[torch.randperm(8)], teacher)
    assert aligned.item() < 0.01 < shuffled.item()


def test_backbone_never_changes_during_training(tiny_backbone):
    from depthmux.multiplexing.losses import revmux_loss

    before = {k: v.clone() for k, v in tiny_backbone.state_dict().items()}
    head = LinearProbeHead(tiny_backbone.hidden_size, 2)
    model = MultiplexedClassifier(MuxConfig(n=2, prefill_layers=1), tiny_backbone, head)
    head_before = head.weight.clone()
    adapters_before = {k: v.clone() for k, v in model.trainable_state_dict().items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = tiny_backbone.tokenize(["a good movie", "a bad film indeed", "fine", "terrible acting"])
    hidden = tiny_backbone.prefill(batch, 1)
    for _ in range(3):
        logits, rec = model.forward_from_prefill(hidden, batch.attention_mask)
        loss, _ = revmux_loss(logits, torch.tensor([1, 0, 1, 0]), rec, tiny_backbone.encode(batch), 0.25, 0.05)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(not p.requires_grad for p in tiny_backbone.parameters())
    for k, v in tiny_backbone.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert torch.equal(head.weight, head_before)
    moved = [k for k, v in model.trainable_state_dict().items() if not torch.equal(v, adapters_before[k])]
    assert moved, "the adapters should train"
    assert "backbone" not in " ".join(model.state_dict())  # the backbone is never saved with adapters
