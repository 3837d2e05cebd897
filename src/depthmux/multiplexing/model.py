"""The two RevMUX classifiers around one frozen backbone and one frozen task head (SPEC 1.1, 1.2).

* :class:`TeacherClassifier` (N = 1): each input alone through the whole frozen backbone, its
  read-out, the head. The accuracy and speed baseline of every report; the head (a linear probe
  today) is trained on its read-outs.
* :class:`MultiplexedClassifier` (N >= 2): prefill (l layers, each input alone) -> ``f_down``
  -> mux -> the frozen layers l+1..L once per group of N -> demux -> ``f_up`` -> the same head.

Both share :class:`FrozenBackboneClassifier`: the backbone (held, never saved), the frozen
:class:`~depthmux.multiplexing.heads.TaskHead`, ``predict``/``classify`` and persistence. Only ``down``,
``mixer`` and ``up`` train; :func:`load_classifier` (or ``from_pretrained``) reloads a folder
written by ``save_pretrained``, reloading the backbone from the name/path in its config.

One computation for cached and real inputs: ``MultiplexedClassifier.forward(batch)`` is prefill
followed by :meth:`MultiplexedClassifier.forward_from_prefill`, and the feature cache feeds the
same method; it moves padding to the backbone's composite side, zeroes prefill states at padded
positions and cuts padding to the longest input, so cached training/evaluation and real inference
give the same logits (SPEC 1.1, last paragraph).

Any backbone family (SPEC 1.6): after the frozen layers l+1..L run on the composite, the
backbone's ``output_states`` runs on the composite too (a final norm; for T5 the encoder's norm
and the whole decoder), then demux reads only the read-out window (encoders: [CLS] or every
position; decoder-only: the group's last position, where every slot's last real token sits;
T5: the decoder's answer position), and the backbone's ``pool`` picks each slot's read-out.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field, fields
from typing import ClassVar, NamedTuple

import torch
from torch import nn

from depthmux.backbones import READOUT_MODES, EncodedBatch, FrozenBackbone, load_backbone
from depthmux.errors import DepthmuxError, require
from depthmux.multiplexing.adapters import DownProjection, UpProjection
from depthmux.multiplexing.features import FeatureCache
from depthmux.multiplexing.heads import TaskHead, head_from_description
from depthmux.multiplexing.mixers import MIXERS, build_multiplexer
from depthmux.utils.checkpoint import load_checkpoint, save_checkpoint
from depthmux.utils.checks import check_int

FORMAT_VERSION = 2
READOUTS = READOUT_MODES  # cls | mean | last (decoder-only) | answer (encoder-decoder)


@dataclass
class TeacherConfig:
    """What rebuilds the frozen parts: the backbone (name or folder), its read-out, the labels."""

    backbone: str = "minilm"  # "minilm" / "smollm2" (packaged) or a local model folder
    readout: str = "mean"  # cls | mean | last | answer: where pooling (and demux) read the output
    task: str | None = None
    label_names: list[str] = field(default_factory=lambda: ["0", "1"])
    prompt: str | None = None  # template the backbone applies to every text (verbalizers); None: as is

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def validate(self, backbone: FrozenBackbone | None = None) -> None:
        """Types and ranges; with ``backbone``, also that this config fits it."""
        require(
            isinstance(self.backbone, str) and self.backbone != "",
            f"backbone must be a name or folder, got {self.backbone!r}",
        )
        require(self.readout in READOUTS, f"unknown readout {self.readout!r}: choose one of {list(READOUTS)}")
        require(isinstance(self.task, str | None), f"task must be a string, got {self.task!r}")
        require(isinstance(self.prompt, str | None), f"prompt must be a string, got {self.prompt!r}")
        names = self.label_names
        require(
            isinstance(names, list)
            and len(names) >= 2
            and all(isinstance(x, str) for x in names)
            and len(set(names)) == len(names),
            f"label_names must be >= 2 distinct strings, got {names!r}",
        )
        if backbone is not None:
            require(
                self.readout == backbone.readout_mode,
                f"the config reads out by {self.readout!r} but the backbone by {backbone.readout_mode!r}",
            )
            require(
                self.prompt == backbone.prompt,
                f"the config's prompt {self.prompt!r} differs from the backbone's {backbone.prompt!r}",
            )

    @classmethod
    def from_dict(cls, values: dict) -> TeacherConfig:
        """Build and validate from a checkpoint's JSON; unknown keys are an error."""
        require(isinstance(values, dict), f"config is not an object: {values!r}")
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        require(not unknown, f"config has unknown key(s) {unknown}")
        config = cls(**values)
        config.validate()
        return config


@dataclass
class MuxConfig(TeacherConfig):
    """A :class:`TeacherConfig` plus the multiplexing: N, l and the mixer (SPEC 1.1, 1.7)."""

    n: int = 2  # inputs per backbone pass
    prefill_layers: int = 0  # l: layers each input runs alone before mixing
    mixer: str = "reversible"  # reversible | vanilla | datamux | ora

    def validate(self, backbone: FrozenBackbone | None = None) -> None:
        super().validate(backbone)
        check_int("N (inputs per pass of a multiplexed model; N = 1 is the teacher)", self.n, 2)
        check_int("prefill layers l", self.prefill_layers, 0)
        require(self.mixer in MIXERS, f"unknown mixer {self.mixer!r}: choose one of {list(MIXERS)}")
        if backbone is not None:
            backbone.check_prefill(self.prefill_layers)
            MIXERS[self.mixer].slot_width(backbone.hidden_size, self.n)

    def teacher_config(self) -> TeacherConfig:
        return TeacherConfig(**{f.name: getattr(self, f.name) for f in fields(TeacherConfig)})


def speedup_ceiling(num_layers: int, prefill_layers: int, n: int) -> float:
    """``L / (l + (L - l)/N)`` (SPEC 1.5)."""
    return num_layers / (prefill_layers + (num_layers - prefill_layers) / n)


def whole_groups(batch_size: int, n: int) -> int:
    """The batch size actually used: the largest multiple of N not above ``batch_size`` (at least N),
    so that every path (predict, cached evaluation, benchmark) groups the same inputs together."""
    return max(n, batch_size - batch_size % n)


class ClassifierOutput(NamedTuple):
    logits: torch.Tensor  # [B, C]
    readout: torch.Tensor  # [B, d]: h_k (teacher) or ĥ_k = f_up(demuxed read-out) (multiplexed)


class FrozenBackboneClassifier(nn.Module, ABC):
    """What both classifiers share: a frozen backbone (not owned: never in ``state_dict``), a frozen
    task head, ``predict`` and ``save_pretrained``/``from_pretrained``.

    Args:
        config: :class:`TeacherConfig` or :class:`MuxConfig` (validated against the backbone).
        backbone: the frozen backbone.
        head: the frozen :class:`TaskHead` (``num_labels`` must match the config's labels).
    """

    checkpoint_kind: ClassVar[str]  # "kind" in state.json
    config_class: ClassVar[type[TeacherConfig]]

    def __init__(self, config: TeacherConfig, backbone: FrozenBackbone, head: TaskHead) -> None:
        super().__init__()
        config.validate(backbone)
        require(
            head.num_labels == config.num_labels,
            f"the head predicts {head.num_labels} labels but the config "
            f"names {config.num_labels}: {config.label_names}",
        )
        self.config = config
        self.backbone = [backbone]  # a list keeps it out of state_dict() and parameters()
        self.head = head.freeze().to(backbone.device)  # the classifier lives where its backbone does

    @property
    def body(self) -> FrozenBackbone:
        return self.backbone[0]

    def place(self, device: torch.device | str) -> FrozenBackboneClassifier:
        """Move the backbone (not a submodule, so ``.to`` leaves it) and the head and adapters to ``device``."""
        self.body.to(device)
        return self.to(device)

    @property
    @abstractmethod
    def group_size(self) -> int:
        """Inputs per backbone pass (1 or N)."""

    @property
    @abstractmethod
    def cache_layers(self) -> list[int]:
        """Prefill layers a :class:`FeatureCache` must hold for :meth:`logits_from_cache`."""

    @abstractmethod
    def forward(self, batch: EncodedBatch) -> ClassifierOutput:
        """Tokens -> logits, everything included: [B, S] -> [B, C]."""

    @abstractmethod
    def logits_from_cache(self, cache: FeatureCache, index: torch.Tensor) -> torch.Tensor:
        """Logits [len(index), C] of cached examples ``index`` (consecutive N share a pass); the same
        computation as :meth:`forward` on those inputs."""

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The adapters (everything but the frozen head); empty for the teacher."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("head.")}

    @torch.no_grad()
    def predict(self, texts: list, batch_size: int = 64) -> torch.Tensor:
        """Class ids for raw texts, grouped in the given order: list -> [B] (an empty list -> [0])."""
        require(
            texts is not None and hasattr(texts, "__len__") and hasattr(texts, "__getitem__"),
            f"predict takes a list of texts, got {type(texts).__name__}",
        )
        batch_size = whole_groups(batch_size, self.group_size)
        if len(texts) == 0:
            return torch.empty(0, dtype=torch.long, device=self.body.device)
        preds = []
        for i in range(0, len(texts), batch_size):
            preds.append(self(self.body.tokenize(texts[i : i + batch_size])).logits.argmax(-1))
        return torch.cat(preds)

    @torch.no_grad()
    def classify(self, texts: list, lock: AbstractContextManager | None = None) -> tuple[list[str], list[list[float]]]:
        """Labels and probabilities of ONE batch (grouped as :meth:`predict`): B texts -> ([B] names, [B][C]).
        ``lock`` is held while tokenising only (a fast tokenizer used by several threads keeps padding state)."""
        with lock or nullcontext():
            batch = self.body.tokenize(texts)
        probs = self(batch).logits.float().softmax(-1).cpu()
        return [self.config.label_names[j] for j in probs.argmax(-1).tolist()], probs.tolist()

    def save_pretrained(self, directory: str | os.PathLike, extra_state: dict | None = None) -> None:
        """Atomically write ``state.json`` (kind, config, head description, ``extra_state``),
        ``head.safetensors`` and, for the multiplexed model, ``adapters.safetensors``."""
        tensors = {"head": self.head.state_dict(), "adapters": self.trainable_state_dict()}
        state = {
            "format_version": FORMAT_VERSION,
            "kind": self.checkpoint_kind,
            "config": asdict(self.config),
            "head": self.head.description(),
            **(extra_state or {}),
        }
        save_checkpoint(directory, {k: v for k, v in tensors.items() if v}, state)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, backbone: FrozenBackbone | None = None):
        """Reload what :meth:`save_pretrained` wrote (loads the backbone unless one is given)."""
        model = load_classifier(directory, backbone)
        if not isinstance(model, cls):
            raise DepthmuxError(
                f"{directory} holds a {type(model).__name__} checkpoint, not a {cls.__name__}: "
                f"load it with {type(model).__name__}.from_pretrained or load_classifier"
            )
        return model


class TeacherClassifier(FrozenBackboneClassifier):
    """N = 1: ``head(readout(Backbone_{0:L}(X)))`` for each input alone (SPEC 1.2)."""

    checkpoint_kind = "depthmux-mux-teacher"
    config_class = TeacherConfig

    @property
    def group_size(self) -> int:
        return 1

    @property
    def cache_layers(self) -> list[int]:
        return []

    def forward(self, batch: EncodedBatch) -> ClassifierOutput:
        readout = self.body.encode(batch)  # [B, d]
        return ClassifierOutput(self.head(readout), readout)

    def logits_from_cache(self, cache: FeatureCache, index: torch.Tensor) -> torch.Tensor:
        return self.head(cache.teacher[index])


class MultiplexedClassifier(FrozenBackboneClassifier):
    """RevMUX, N >= 2 inputs per pass of the frozen layers l+1..L (SPEC 1.1)."""

    checkpoint_kind = "depthmux-mux"
    config_class = MuxConfig

    def __init__(self, config: MuxConfig, backbone: FrozenBackbone, head: TaskHead) -> None:
        super().__init__(config, backbone, head)
        d = backbone.hidden_size
        w = MIXERS[config.mixer].slot_width(d, config.n)
        self.down = DownProjection(d, w)
        self.mixer = build_multiplexer(config.mixer, config.n, d)
        self.up = UpProjection(w, d)
        self.to(backbone.device)

    @property
    def group_size(self) -> int:
        return self.config.n

    @property
    def cache_layers(self) -> list[int]:
        return [self.config.prefill_layers]

    def teacher(self) -> TeacherClassifier:
        """The N = 1 twin: the same frozen backbone and head, no adapters (the baseline path)."""
        return TeacherClassifier(self.config.teacher_config(), self.body, self.head)

    def forward_from_prefill(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> ClassifierOutput:
        """The one path from prefill states to logits (real inputs and the feature cache).

        Args:
            hidden: ``h_k = Encoder_{0:l}(X_k)``, [B, S, d], padded on either side. Values at
                padded positions are ignored: the padding is moved to the backbone's composite
                side (``body.align``: right for encoders and T5, left for decoder-only models, so
                every slot's last real token sits at the group's last position), set to zero,
                and S is cut to the longest input.
            attention_mask: [B, S], 1 for real tokens.
        Returns:
            :class:`ClassifierOutput`: logits [B, C] and the recovered read-out ĥ_k [B, d].
        """
        body, cfg, n = self.body, self.config, self.config.n
        hidden, attention_mask = body.align(hidden, attention_mask)
        S = hidden.shape[1]
        hidden = hidden.masked_fill(attention_mask[..., None] == 0, 0.0)
        B, _, d = hidden.shape
        groups = -(-B // n)
        pad = groups * n - B
        if pad:  # dummy inputs complete the last group; their outputs are dropped (SPEC 1.1 step 4)
            hidden = torch.cat([hidden, hidden.new_zeros(pad, S, d)])
            attention_mask = torch.cat([attention_mask, attention_mask.new_zeros(pad, S)])
        slots = self.down(hidden).view(groups, n, S, -1).transpose(0, 1)  # [N, G, S, w]
        composite = self.mixer.mux(slots)  # [G, S, d]
        group_mask = attention_mask.view(groups, n, S).amax(dim=1)  # OR of the N masks, [G, S]
        out = body.run_layers(composite, group_mask, cfg.prefill_layers, body.num_layers)
        out, _ = body.output_states(out, group_mask)  # final norm / T5 decoder, on the composite: [G, S', d]
        slot_mask = body.output_mask(attention_mask)  # each input's own mask there, [G*N, S']
        out, slot_mask = body.readout_window(out, slot_mask)  # demux only where the read-out looks (SPEC 1.1 step 5)
        demuxed = self.mixer.demux(out)  # [N, G, S'', w]
        demuxed = demuxed.transpose(0, 1).reshape(groups * n, out.shape[1], -1)[:B]
        pooled = body.pool(demuxed, slot_mask[:B])  # [B, w]
        recovered = self.up(pooled)  # ĥ_k, [B, d]
        return ClassifierOutput(self.head(recovered), recovered)

    def forward(self, batch: EncodedBatch) -> ClassifierOutput:
        hidden = self.body.run_layers(self.body.embed(batch), batch.attention_mask, 0, self.config.prefill_layers)
        return self.forward_from_prefill(hidden, batch.attention_mask)

    def logits_from_cache(self, cache: FeatureCache, index: torch.Tensor) -> torch.Tensor:
        return self.forward_from_prefill(*cache.batch(self.config.prefill_layers, index)).logits


CLASSIFIERS: dict[str, type[FrozenBackboneClassifier]] = {
    c.checkpoint_kind: c for c in (TeacherClassifier, MultiplexedClassifier)
}


def _upgrade_format_1(state: dict, tensors: dict) -> dict:
    """Format 1 (one class, ``n == 1`` for the teacher, an ``nn.Linear`` head) -> format 2."""
    config = dict(state["config"])
    config.pop("num_labels", None)
    teacher = config.get("n") == 1
    if teacher:
        for key in ("n", "prefill_layers", "mixer"):
            config.pop(key, None)
    weight = tensors["head"]["weight"]
    return {
        **state,
        "format_version": 2,
        "kind": TeacherClassifier.checkpoint_kind if teacher else state["kind"],
        "config": config,
        "head": {"kind": "linear_probe", "d_model": weight.shape[1], "num_labels": weight.shape[0]},
    }


def load_classifier(
    directory: str | os.PathLike, backbone: FrozenBackbone | None = None
) -> TeacherClassifier | MultiplexedClassifier:
    """Reload a checkpoint of either kind; a corrupt one (unknown keys, wrong types, tensors that do
    not match the config) is one line naming it."""
    tensors, state = load_checkpoint(directory)
    where = f"corrupt checkpoint {directory}"
    if not isinstance(state, dict) or state.get("kind") not in CLASSIFIERS:
        raise DepthmuxError(f"{directory} is not a depthmux mux checkpoint")
    try:
        if state.get("format_version") == 1:
            state = _upgrade_format_1(state, tensors)
        require(
            state.get("format_version") == FORMAT_VERSION,
            f"format_version {state.get('format_version')!r}, expected {FORMAT_VERSION}",
        )
        cls = CLASSIFIERS[state["kind"]]
        config = cls.config_class.from_dict(state.get("config"))
    except (DepthmuxError, KeyError, TypeError) as e:
        raise DepthmuxError(f"{where}: {e}") from None
    if backbone is None:
        backbone = load_backbone(config.backbone, config.readout, config.prompt)
    try:
        head = head_from_description(state["head"], backbone)
        head.load_state_dict(tensors.get("head", {}))  # a verbalizer has no tensors of its own
        model = cls(config, backbone, head)
        missing, unexpected = model.load_state_dict(tensors.get("adapters", {}), strict=False)
    except (DepthmuxError, KeyError, TypeError) as e:
        raise DepthmuxError(f"{where}: {e}") from None
    except RuntimeError as e:  # tensor shapes that do not match the config
        raise DepthmuxError(
            f"{where}: its tensors do not match its config ({str(e).splitlines()[-1].strip()})"
        ) from None
    missing = [m for m in missing if not m.startswith("head.")]
    if missing or unexpected:
        raise DepthmuxError(
            f"{where}: adapter tensors do not match the config (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return model
