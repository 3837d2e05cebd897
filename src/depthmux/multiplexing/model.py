"""The multiplexed classifier: prefill -> f_down -> mux -> frozen body -> demux -> f_up -> head.

One module serves both paths of every report (SPEC 1.1, 1.2):

* ``n == 1`` is the **teacher**: the frozen backbone on each input alone, read-out, frozen probe;
* ``n >= 2`` is the **multiplexed** path, N inputs per backbone pass.

Only ``down``, ``mixer`` and ``up`` train. The backbone is never saved with the adapters;
``from_pretrained`` reloads it from the name/path recorded in the config.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from typing import NamedTuple

import torch
from torch import nn

from depthmux.backbones import EncodedBatch, FrozenBackbone, load_backbone
from depthmux.errors import DepthmuxError, require
from depthmux.multiplexing.adapters import DownProjection, UpProjection
from depthmux.multiplexing.mixers import MIXERS, build_multiplexer
from depthmux.utils.checkpoint import load_checkpoint, save_checkpoint

FORMAT_VERSION = 1


@dataclass
class MuxConfig:
    """Everything needed to rebuild a :class:`MultiplexedClassifier` around its backbone."""

    n: int = 2                      # inputs per backbone pass (1 = teacher path)
    prefill_layers: int = 0         # l: layers each input runs alone before mixing
    mixer: str = "reversible"       # reversible | vanilla | datamux | ora (SPEC 1.7)
    backbone: str = "minilm"        # "minilm" (packaged) or a local model folder
    readout: str = "mean"           # cls | mean: where demux + pooling read the output
    num_labels: int = 2
    task: str | None = None
    label_names: list[str] = field(default_factory=lambda: ["0", "1"])

    def validate(self, backbone: FrozenBackbone) -> None:
        require(self.n >= 1, f"N must be >= 1, got {self.n}")
        backbone.check_prefill(self.prefill_layers)
        if self.n > 1:
            require(self.mixer in MIXERS, f"unknown mixer {self.mixer!r}: choose one of {list(MIXERS)}")
            MIXERS[self.mixer].slot_width(backbone.hidden_size, self.n)


def speedup_ceiling(num_layers: int, prefill_layers: int, n: int) -> float:
    """``L / (l + (L - l)/N)`` (SPEC 1.5)."""
    return num_layers / (prefill_layers + (num_layers - prefill_layers) / n)


class MuxOutput(NamedTuple):
    logits: torch.Tensor   # [B, C]
    readout: torch.Tensor  # [B, d]: ĥ_k (multiplexed) or h_k (teacher)


class MultiplexedClassifier(nn.Module):
    """RevMUX around a frozen backbone and a frozen probe head.

    Args:
        config: :class:`MuxConfig`.
        backbone: the frozen backbone (shared, not owned: never saved here).
        head: the frozen task head, a ``nn.Linear(d, num_labels)`` trained by the teacher.
    """

    def __init__(self, config: MuxConfig, backbone: FrozenBackbone, head: nn.Linear) -> None:
        super().__init__()
        config.validate(backbone)
        self.config = config
        self.backbone = [backbone]  # a list: keeps it out of state_dict / parameters()
        d = backbone.hidden_size
        self.head = head
        for p in self.head.parameters():
            p.requires_grad_(False)
        if config.n > 1:
            w = MIXERS[config.mixer].slot_width(d, config.n)
            self.down = DownProjection(d, w)
            self.mixer = build_multiplexer(config.mixer, config.n, d)
            self.up = UpProjection(w, d)

    @property
    def body(self) -> FrozenBackbone:
        return self.backbone[0]

    @property
    def start_layer(self) -> int:
        """Layers run per input before the shared pass: l (multiplexed), all of them (teacher)."""
        return 0 if self.config.n == 1 else self.config.prefill_layers

    def teacher(self) -> "MultiplexedClassifier":
        """The N = 1 twin: the same frozen backbone and head, no adapters (the baseline path)."""
        if self.config.n == 1:
            return self
        return MultiplexedClassifier(replace(self.config, n=1), self.body, self.head)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("head.")}

    # -- forward paths ---------------------------------------------------------------------
    def forward_from_prefill(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> MuxOutput:
        """Run from cached prefill states.

        Args:
            hidden: ``h_k = Encoder_{0:start_layer}(X_k)``, [B, S, d] (teacher: the embeddings).
            attention_mask: [B, S], 1 for real tokens.
        Returns:
            :class:`MuxOutput` with logits [B, C] and the read-out [B, d].
        """
        body, cfg = self.body, self.config
        if cfg.n == 1:
            h = body.run_layers(hidden, attention_mask, 0, body.num_layers)
            pooled = body.readout(h, attention_mask)
            return MuxOutput(self.head(pooled), pooled)
        B, S, d = hidden.shape
        n = cfg.n
        groups = -(-B // n)
        pad = groups * n - B
        if pad:  # dummy inputs complete the last group; their outputs are dropped (SPEC 1.1 step 4)
            hidden = torch.cat([hidden, hidden.new_zeros(pad, S, d)])
            attention_mask = torch.cat([attention_mask, attention_mask.new_zeros(pad, S)])
        slots = self.down(hidden).view(groups, n, S, -1).transpose(0, 1)       # [N, G, S, w]
        composite = self.mixer.mux(slots)                                      # [G, S, d]
        group_mask = attention_mask.view(groups, n, S).amax(dim=1)            # OR of the N masks
        out = body.run_layers(composite, group_mask, cfg.prefill_layers, body.num_layers)
        if cfg.readout == "cls":
            out = out[:, :1]
        demuxed = self.mixer.demux(out)                                        # [N, G, S', w]
        demuxed = demuxed.transpose(0, 1).reshape(groups * n, out.shape[1], -1)[:B]
        pooled = body.readout(demuxed, attention_mask[:B, : out.shape[1]])     # [B, w]
        recovered = self.up(pooled)                                            # ĥ_k, [B, d]
        return MuxOutput(self.head(recovered), recovered)

    def forward(self, batch: EncodedBatch) -> MuxOutput:
        """Tokens -> logits, prefill included: [B, S] -> [B, C]."""
        hidden = self.body.run_layers(self.body.embed(batch), batch.attention_mask, 0, self.start_layer)
        return self.forward_from_prefill(hidden, batch.attention_mask)

    @torch.no_grad()
    def predict(self, texts: list, batch_size: int = 64) -> torch.Tensor:
        """Class ids for raw texts, grouped in the given order: list -> [B]."""
        preds = []
        for i in range(0, len(texts), batch_size):
            preds.append(self(self.body.tokenize(texts[i:i + batch_size])).logits.argmax(-1))
        return torch.cat(preds)

    # -- persistence -------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike, extra_state: dict | None = None) -> None:
        """Atomically write adapters + head (safetensors) and the config (JSON)."""
        tensors = {"head": {k: v for k, v in self.head.state_dict().items()}}
        if self.config.n > 1:
            tensors["adapters"] = self.trainable_state_dict()
        state = {"format_version": FORMAT_VERSION, "kind": "depthmux-mux", "config": asdict(self.config)}
        state.update(extra_state or {})
        save_checkpoint(directory, tensors, state)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, backbone: FrozenBackbone | None = None
                        ) -> "MultiplexedClassifier":
        """Reload what :meth:`save_pretrained` wrote; loads the backbone unless one is given."""
        tensors, state = load_checkpoint(directory)
        if state.get("kind") != "depthmux-mux" or "head" not in tensors:
            raise DepthmuxError(f"{directory} is not a depthmux mux checkpoint")
        config = MuxConfig(**state["config"])
        if backbone is None:
            backbone = load_backbone(config.backbone, config.readout)
        head_sd = tensors["head"]
        head = nn.Linear(head_sd["weight"].shape[1], head_sd["weight"].shape[0])
        head.load_state_dict(head_sd)
        model = cls(config, backbone, head)
        if config.n > 1:
            missing, unexpected = model.load_state_dict(tensors.get("adapters", {}), strict=False)
            missing = [m for m in missing if not m.startswith("head.")]
            if missing or unexpected:
                raise DepthmuxError(f"corrupt checkpoint {directory}: adapter tensors do not match the config "
                                    f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
        return model
