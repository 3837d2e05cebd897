"""Which architectures can serve as a frozen RevMUX backbone: one table keyed by the
``model_type`` of a Hugging Face folder's ``config.json`` (as PEFT keeps its architecture
knowledge in one table), and :func:`load_backbone`, the one loader.

A folder of a known but unsupported kind (a decoder-only LM such as llama or a depthmux
recursive model, or an encoder-decoder such as t5) or of an unknown ``model_type`` is refused
with one line naming it, before transformers is asked to load anything (SPEC 1.6).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from depthmux.backbones.base import FrozenBackbone
from depthmux.backbones.encoder import DEFAULT_MODEL, HFEncoderBackbone, resolve_model_path
from depthmux.errors import DepthmuxError
from depthmux.utils.checkpoint import read_json


@dataclass(frozen=True)
class BackboneFamily:
    """One architecture: its kind and, when RevMUX supports it, the backbone class that runs it."""

    kind: str  # "encoder" | "decoder-only" | "encoder-decoder"
    backbone_class: type[HFEncoderBackbone] | None = None


ENCODER = BackboneFamily("encoder", HFEncoderBackbone)
DECODER_ONLY = BackboneFamily("decoder-only")
ENCODER_DECODER = BackboneFamily("encoder-decoder")

#: ``model_type`` -> family. Encoders listed here run through :class:`HFEncoderBackbone`
#: (``embeddings`` + ``encoder.layer``, each layer called as ``layer(hidden, mask)``).
BACKBONE_FAMILIES: dict[str, BackboneFamily] = {
    "bert": ENCODER,
    "roberta": ENCODER,
    "xlm-roberta": ENCODER,
    "llama": DECODER_ONLY,
    "mistral": DECODER_ONLY,
    "qwen2": DECODER_ONLY,
    "qwen3": DECODER_ONLY,
    "gemma": DECODER_ONLY,
    "gemma2": DECODER_ONLY,
    "phi3": DECODER_ONLY,
    "gpt2": DECODER_ONLY,
    "gpt_neox": DECODER_ONLY,
    "depthmux_recursive": DECODER_ONLY,
    "t5": ENCODER_DECODER,
    "mt5": ENCODER_DECODER,
    "bart": ENCODER_DECODER,
}


def supported_model_types() -> list[str]:
    return [t for t, f in BACKBONE_FAMILIES.items() if f.backbone_class is not None]


def backbone_family(model: str | os.PathLike | None) -> tuple[str, BackboneFamily]:
    """``(model_type, family)`` of a model folder, read from its config.json; one line if unsupported."""
    path = resolve_model_path(model)
    config = read_json(path / "config.json", f"model folder {path}")
    model_type = config.get("model_type") if isinstance(config, dict) else None
    supported = ", ".join(supported_model_types())
    if not isinstance(model_type, str):
        raise DepthmuxError(
            f"{path}/config.json has no model_type: not a Hugging Face model folder "
            f"(mux supports encoder families: {supported})"
        )
    family = BACKBONE_FAMILIES.get(model_type)
    if family is None:
        raise DepthmuxError(
            f"{path} is a {model_type!r} model, unknown to mux; mux supports encoder families: {supported}"
        )
    if family.backbone_class is None:
        raise DepthmuxError(
            f"{path} is a {model_type} model ({family.kind}); mux supports encoder families: {supported}"
        )
    return model_type, family


def load_backbone(model: str | os.PathLike | None = None, readout: str | None = None) -> FrozenBackbone:
    """Load a frozen backbone by name or folder (``None`` or "minilm": the packaged MiniLM).

    Args:
        model: "minilm" or a local Hugging Face folder whose ``model_type`` is in :data:`BACKBONE_FAMILIES`
            with a backbone class.
        readout: "cls" | "mean" | None (None: the folder's own pooling, see ``HFEncoderBackbone``).
    """
    _, family = backbone_family(model)
    return family.backbone_class.from_pretrained(DEFAULT_MODEL if model is None else model, readout)
