"""Frozen pretrained backbones that can run any range of their layers (SPEC 1.1, 1.6).

The multiplexing code talks only to :class:`FrozenBackbone`: ``embed`` (layer 0), ``run_layers``
over ``[a, b)`` and ``readout``. Folders are loaded by :func:`load_backbone` through one table
keyed by ``model_type`` (:data:`BACKBONE_FAMILIES`): BERT-family encoders are implemented;
decoder-only and encoder-decoder models are refused with one line until their backbone classes
exist.
"""

from depthmux.backbones.base import EncodedBatch, FrozenBackbone
from depthmux.backbones.encoder import HFEncoderBackbone
from depthmux.backbones.registry import BACKBONE_FAMILIES, BackboneFamily, backbone_family, load_backbone

__all__ = [
    "BACKBONE_FAMILIES",
    "BackboneFamily",
    "EncodedBatch",
    "FrozenBackbone",
    "HFEncoderBackbone",
    "backbone_family",
    "load_backbone",
]
