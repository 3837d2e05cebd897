"""Frozen pretrained backbones that can run any range of their layers.

The multiplexing code talks only to :class:`FrozenBackbone`: ``embed`` (layer 0), ``run_layers``
over ``[a, b)`` and ``readout``. Encoder (BERT family) is implemented; decoder-only and
encoder-decoder backbones plug in by subclassing the same interface.
"""

from depthmux.backbones.base import EncodedBatch, FrozenBackbone
from depthmux.backbones.encoder import HFEncoderBackbone, load_backbone

__all__ = ["EncodedBatch", "FrozenBackbone", "HFEncoderBackbone", "load_backbone"]
