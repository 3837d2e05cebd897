"""Width: RevMUX data multiplexing on a frozen backbone (SPEC 1)."""

from depthmux.multiplexing.adapters import DownProjection, UpProjection
from depthmux.multiplexing.mixers import (
    MIXERS,
    DataMuxMultiplexer,
    Multiplexer,
    ReversibleMultiplexer,
    ReversibleMuxMLPDemux,
    VanillaMultiplexer,
    build_multiplexer,
)
from depthmux.multiplexing.model import MultiplexedClassifier, MuxConfig, MuxOutput, speedup_ceiling
from depthmux.multiplexing.teacher import train_probe

__all__ = [
    "MIXERS", "DataMuxMultiplexer", "DownProjection", "MultiplexedClassifier", "Multiplexer", "MuxConfig",
    "MuxOutput", "ReversibleMultiplexer", "ReversibleMuxMLPDemux", "UpProjection", "VanillaMultiplexer",
    "build_multiplexer", "speedup_ceiling", "train_probe",
]
