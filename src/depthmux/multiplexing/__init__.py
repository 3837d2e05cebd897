"""Width: RevMUX data multiplexing on a frozen backbone (SPEC 1).

Components: adapters (``f_down``, ``f_up``), mixers (reversible and the SPEC 1.7 baselines),
task heads, the teacher and multiplexed classifiers, the prefill feature cache, the loss,
grouped evaluation and the speed benchmark. The end-to-end grid experiment is a recipe
(:mod:`depthmux.recipes.mux`).
"""

from depthmux.multiplexing.adapters import DownProjection, UpProjection
from depthmux.multiplexing.evaluation import BenchResult, GroupedScore, benchmark, evaluate_grouped
from depthmux.multiplexing.features import FeatureCache, build_feature_cache
from depthmux.multiplexing.heads import HEADS, TASK_VERBALIZERS, LinearProbeHead, TaskHead, VerbalizerHead
from depthmux.multiplexing.mixers import (
    MIXERS,
    DataMuxMultiplexer,
    Multiplexer,
    ReversibleMultiplexer,
    ReversibleMuxMLPDemux,
    VanillaMultiplexer,
    build_multiplexer,
)
from depthmux.multiplexing.model import (
    ClassifierOutput,
    FrozenBackboneClassifier,
    MultiplexedClassifier,
    MuxConfig,
    TeacherClassifier,
    TeacherConfig,
    load_classifier,
    speedup_ceiling,
)
from depthmux.multiplexing.teacher import train_probe

__all__ = [
    "HEADS",
    "MIXERS",
    "TASK_VERBALIZERS",
    "BenchResult",
    "ClassifierOutput",
    "DataMuxMultiplexer",
    "DownProjection",
    "FeatureCache",
    "FrozenBackboneClassifier",
    "GroupedScore",
    "LinearProbeHead",
    "MultiplexedClassifier",
    "Multiplexer",
    "MuxConfig",
    "ReversibleMultiplexer",
    "ReversibleMuxMLPDemux",
    "TaskHead",
    "TeacherClassifier",
    "TeacherConfig",
    "UpProjection",
    "VanillaMultiplexer",
    "VerbalizerHead",
    "benchmark",
    "build_feature_cache",
    "build_multiplexer",
    "evaluate_grouped",
    "load_classifier",
    "speedup_ceiling",
    "train_probe",
]
