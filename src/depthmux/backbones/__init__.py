"""Frozen pretrained backbones that can run any range of their layers (SPEC 1.1, 1.6).

The multiplexing code talks only to :class:`FrozenBackbone`: ``embed`` (layer 0), ``run_layers``
over ``[a, b)``, ``output_states`` and ``pool`` (the read-out), ``align`` (padding side of a
composite). Folders are loaded by :func:`load_backbone` through one table keyed by
``model_type`` (:data:`BACKBONE_FAMILIES`): encoders (BERT family, MPNet, DeBERTa-v2,
ModernBERT), decoder-only LMs (LLaMA family, incl. the packaged SmolLM2) and encoder-decoders
(T5 family). Other kinds are refused with one line.
"""

from depthmux.backbones.base import READOUT_MODES, EncodedBatch, FrozenBackbone, format_prompt
from depthmux.backbones.decoder import HFDecoderBackbone
from depthmux.backbones.encoder import DebertaV2Backbone, HFEncoderBackbone, ModernBertBackbone, MPNetBackbone
from depthmux.backbones.loading import PACKAGED_MODELS, load_hf_model, load_hf_tokenizer, resolve_model_path
from depthmux.backbones.registry import BACKBONE_FAMILIES, BackboneFamily, backbone_family, load_backbone
from depthmux.backbones.seq2seq import HFSeq2SeqBackbone

__all__ = [
    "BACKBONE_FAMILIES",
    "PACKAGED_MODELS",
    "READOUT_MODES",
    "BackboneFamily",
    "DebertaV2Backbone",
    "EncodedBatch",
    "FrozenBackbone",
    "HFDecoderBackbone",
    "HFEncoderBackbone",
    "HFSeq2SeqBackbone",
    "MPNetBackbone",
    "ModernBertBackbone",
    "backbone_family",
    "format_prompt",
    "load_backbone",
    "load_hf_model",
    "load_hf_tokenizer",
    "resolve_model_path",
]
