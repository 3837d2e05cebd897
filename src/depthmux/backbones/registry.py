"""Which architectures can serve as a frozen RevMUX backbone: one table keyed by the
``model_type`` of a Hugging Face folder's ``config.json`` (as PEFT keeps its architecture
knowledge in one table), and :func:`load_backbone`, the one loader.

A folder of a known but unsupported kind (gpt2, a depthmux recursive model, bart, ...) or of an
unknown ``model_type`` is refused with one line naming it, before transformers is asked to load
anything: a family is listed with a backbone class only once running it layer by layer has been
checked against its own forward (SPEC 1.6).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from depthmux.backbones.base import FrozenBackbone
from depthmux.backbones.decoder import HFDecoderBackbone
from depthmux.backbones.encoder import DebertaV2Backbone, HFEncoderBackbone, ModernBertBackbone, MPNetBackbone
from depthmux.backbones.loading import DEFAULT_MODEL, resolve_model_path
from depthmux.backbones.seq2seq import HFSeq2SeqBackbone
from depthmux.errors import DepthmuxError
from depthmux.utils.checks import check_device, check_model_folder


@dataclass(frozen=True)
class BackboneFamily:
    """One architecture: its kind and, when RevMUX supports it, the backbone class that runs it."""

    kind: str  # "encoder" | "decoder-only" | "encoder-decoder"
    backbone_class: type[FrozenBackbone] | None = None


BERT_LIKE = BackboneFamily("encoder", HFEncoderBackbone)
DECODER_ONLY = BackboneFamily("decoder-only", HFDecoderBackbone)
UNSUPPORTED_DECODER = BackboneFamily("decoder-only")
T5_LIKE = BackboneFamily("encoder-decoder", HFSeq2SeqBackbone)
UNSUPPORTED_ENCODER_DECODER = BackboneFamily("encoder-decoder")

#: ``model_type`` -> family.
BACKBONE_FAMILIES: dict[str, BackboneFamily] = {
    "bert": BERT_LIKE,
    "roberta": BERT_LIKE,
    "xlm-roberta": BERT_LIKE,
    "camembert": BERT_LIKE,
    "electra": BERT_LIKE,
    "mpnet": BackboneFamily("encoder", MPNetBackbone),
    "deberta-v2": BackboneFamily("encoder", DebertaV2Backbone),
    "modernbert": BackboneFamily("encoder", ModernBertBackbone),
    "llama": DECODER_ONLY,
    "mistral": DECODER_ONLY,
    "qwen2": DECODER_ONLY,
    "qwen3": DECODER_ONLY,
    "t5": T5_LIKE,
    "mt5": T5_LIKE,
    "gemma": UNSUPPORTED_DECODER,
    "gemma2": UNSUPPORTED_DECODER,
    "phi3": UNSUPPORTED_DECODER,
    "gpt2": UNSUPPORTED_DECODER,
    "gpt_neox": UNSUPPORTED_DECODER,
    "depthmux_recursive": UNSUPPORTED_DECODER,
    "bart": UNSUPPORTED_ENCODER_DECODER,
    "distilbert": BackboneFamily("encoder"),
    "albert": BackboneFamily("encoder"),
    "deberta": BackboneFamily("encoder"),
}


def supported_model_types() -> list[str]:
    return [t for t, f in BACKBONE_FAMILIES.items() if f.backbone_class is not None]


def backbone_family(model: str | os.PathLike | None) -> tuple[str, BackboneFamily]:
    """``(model_type, family)`` of a model folder, read from its config.json; one line if unsupported."""
    path = resolve_model_path(model)
    model_type = check_model_folder(path, weights=False).get("model_type")
    supported = ", ".join(supported_model_types())
    if not isinstance(model_type, str):
        raise DepthmuxError(
            f"{path}/config.json has no model_type: not a Hugging Face model folder (mux supports: {supported})"
        )
    family = BACKBONE_FAMILIES.get(model_type)
    if family is None:
        raise DepthmuxError(f"{path} is a {model_type!r} model, unknown to mux; mux supports: {supported}")
    if family.backbone_class is None:
        raise DepthmuxError(
            f"{path} is a {model_type} model ({family.kind}), which mux cannot run layer by layer; "
            f"mux supports: {supported}"
        )
    return model_type, family


def load_backbone(
    model: str | os.PathLike | None = None,
    readout: str | None = None,
    prompt: str | None = None,
    device: str = "cpu",
) -> FrozenBackbone:
    """Load a frozen backbone by name or folder (``None`` or "minilm": the packaged MiniLM;
    "smollm2": the packaged SmolLM2-135M).

    Args:
        model: a packaged name or a local Hugging Face folder whose ``model_type`` is in
            :data:`BACKBONE_FAMILIES` with a backbone class.
        readout: None (the family's default: the folder's own pooling for encoders, the last real
            token for decoder-only models, the answer position for T5) or one the family supports;
            an encoder read-out ("cls", "mean") given for a decoder model is one line.
        prompt: a template applied to every text before tokenisation (see ``FrozenBackbone.prompt``).
        device: where the weights go ("cpu", "cuda", ...); its batches follow (``FrozenBackbone.tokenize``).
    """
    check_device("device", device)
    model_type, family = backbone_family(model)
    modes = family.backbone_class.readout_modes
    if readout is not None and readout not in modes:
        raise DepthmuxError(
            f"{model if model is not None else DEFAULT_MODEL} is a {model_type} model ({family.kind}): "
            f"readout {readout!r} is not one of its read-outs ({', '.join(modes)})"
        )
    backbone = family.backbone_class.from_pretrained(DEFAULT_MODEL if model is None else model, readout, prompt)
    return backbone.to(device)
