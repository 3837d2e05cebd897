"""Evaluation over random groupings (SPEC 1.4) and the speed benchmark (SPEC 1.5).

Accuracy is computed from the feature cache through each classifier's ``logits_from_cache``,
which is the same computation as its ``forward`` on the raw inputs (same grouping, padding and
masks; tested to < 1e-5), so a reported accuracy is the accuracy of the path a user runs. The
benchmark times that real path, tokenisation excluded, and records what says whether the machine was
busy (:meth:`BenchResult.busy`): the 1-minute load average against the cores, and the spread of the
per-repetition speedups.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import asdict, dataclass, field

import torch
from tqdm.auto import tqdm

from depthmux.backbones import EncodedBatch
from depthmux.errors import require
from depthmux.multiplexing.features import FeatureCache
from depthmux.multiplexing.model import (
    FrozenBackboneClassifier,
    MultiplexedClassifier,
    TeacherClassifier,
    speedup_ceiling,
    whole_groups,
)
from depthmux.utils.checks import device_name


def binary_f1(pred: torch.Tensor, gold: torch.Tensor) -> float:
    tp = ((pred == 1) & (gold == 1)).sum().item()
    fp = ((pred == 1) & (gold == 0)).sum().item()
    fn = ((pred == 0) & (gold == 1)).sum().item()
    return 2 * tp / max(1, 2 * tp + fp + fn)


def per_class_f1(pred: torch.Tensor, gold: torch.Tensor, num_labels: int) -> list[float]:
    """F1 of each class against the rest (a class never predicted nor present scores 0): [M] -> C values."""
    scores = []
    for c in range(num_labels):
        tp = ((pred == c) & (gold == c)).sum().item()
        fp = ((pred == c) & (gold != c)).sum().item()
        fn = ((pred != c) & (gold == c)).sum().item()
        scores.append(2 * tp / max(1, 2 * tp + fp + fn))
    return scores


@dataclass
class GroupedScore:
    """Accuracy (and F1) as mean ± std over random groupings of the evaluation set.

    ``f1_*`` is the binary F1 of label 1 (GLUE's MRPC metric); ``macro_f1_*`` the mean of the
    per-class F1 (imbalanced or multi-class data); ``per_class_f1`` its per-class means over
    groupings and ``support`` the number of evaluation examples of each class.
    """

    accuracy_mean: float
    accuracy_std: float
    f1_mean: float
    f1_std: float
    accuracies: list[float]
    shuffles: int
    macro_f1_mean: float = 0.0
    macro_f1_std: float = 0.0
    per_class_f1: list[float] = field(default_factory=list)
    support: list[int] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"{100 * self.accuracy_mean:.2f} ± {100 * self.accuracy_std:.2f}"


@torch.no_grad()
def logits_cached(
    model: FrozenBackboneClassifier, cache: FeatureCache, order: torch.Tensor, batch_size: int = 64
) -> torch.Tensor:
    """Logits [M, C] on the CPU (row i for example i) with the examples grouped in ``order``: consecutive
    ``group_size`` inputs share a pass, in batches of :func:`whole_groups` (as ``predict``)."""
    model.eval()
    batch_size = whole_groups(batch_size, model.group_size)
    logits = torch.empty(len(order), model.config.num_labels)
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        logits[idx] = model.logits_from_cache(cache, idx).cpu()
    return logits


def predict_cached(
    model: FrozenBackboneClassifier, cache: FeatureCache, order: torch.Tensor, batch_size: int = 64
) -> torch.Tensor:
    """Class ids [M] of :func:`logits_cached`."""
    return logits_cached(model, cache, order, batch_size).argmax(-1)


def evaluate_grouped(
    model: FrozenBackboneClassifier,
    cache: FeatureCache,
    shuffles: int = 10,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = True,
) -> GroupedScore:
    """Accuracy/F1 over ``shuffles`` random groupings (one pass for the teacher: nothing to group)."""
    require(shuffles >= 1, f"shuffles must be >= 1, got {shuffles}")
    runs = 1 if model.group_size == 1 else shuffles
    accs, f1s, per_class = [], [], []
    num_labels = model.config.num_labels
    for r in tqdm(range(runs), desc=f"eval N={model.group_size}", leave=False, disable=not progress):
        order = torch.randperm(len(cache), generator=torch.Generator().manual_seed(seed + r))
        pred = predict_cached(model, cache, order, batch_size)
        accs.append((pred == cache.labels).float().mean().item())
        f1s.append(binary_f1(pred, cache.labels))
        per_class.append(per_class_f1(pred, cache.labels, num_labels))
    std = statistics.stdev if len(accs) > 1 else (lambda _: 0.0)
    macro = [statistics.fmean(p) for p in per_class]
    return GroupedScore(
        statistics.fmean(accs),
        std(accs),
        statistics.fmean(f1s),
        std(f1s),
        accs,
        runs,
        statistics.fmean(macro),
        std(macro),
        [statistics.fmean(c) for c in zip(*per_class, strict=True)],
        torch.bincount(cache.labels, minlength=num_labels).tolist(),
    )


@dataclass
class BenchResult:
    teacher_samples_per_s: float
    mux_samples_per_s: float
    speedup: float  # median over repetitions of the per-repetition ratio
    speedup_min: float
    speedup_max: float
    ceiling: float
    fraction_of_ceiling: float
    n: int
    prefill_layers: int
    num_layers: int
    batch_size: int
    samples: int
    repetitions: int
    threads: int
    device: str = "cpu"  # where it was timed: "cpu" or the GPU's name
    load_avg: float | None = None  # the highest 1-minute load average seen while timing (None: unknown)
    cores: int | None = None  # the cores this process may run on

    def as_dict(self) -> dict:
        return asdict(self)

    def busy(self) -> str | None:
        """A one-line warning when the figure was taken on a busy machine: a 1-minute load average above
        the core count (CPU runs), or per-repetition speedups spread over more than
        :data:`WIDE_SPREAD` of their median; None otherwise."""
        reasons = []
        if self.device == "cpu" and self.load_avg is not None and self.cores and self.load_avg > self.cores:
            reasons.append(f"load {self.load_avg:.1f} on {self.cores} cores")
        if self.speedup > 0 and (self.speedup_max - self.speedup_min) > WIDE_SPREAD * self.speedup:
            reasons.append(f"repetitions spread {self.speedup_min:.2f}-{self.speedup_max:.2f}x")
        if not reasons:
            return None
        return f"busy machine ({', '.join(reasons)}): this speedup is unreliable; rerun when the machine is idle"


#: Per-repetition speedups spread (max - min) over more than this share of their median: other work
#: shared the cores while timing (on an idle 2-core machine the spread stays within a few percent).
WIDE_SPREAD = 0.2


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _load() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _time(fn, batches: list[EncodedBatch]) -> float:
    """Seconds for ``fn`` over ``batches``, queued GPU work included."""
    cuda = batches[0].input_ids.is_cuda
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for b in batches:
        fn(b)
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


@torch.inference_mode()
def benchmark(
    teacher: TeacherClassifier,
    mux: MultiplexedClassifier,
    texts: list,
    batch_size: int = 64,
    repetitions: int = 5,
    progress: bool = True,
    threads: int | None = None,
) -> BenchResult:
    """Samples/s of the teacher path and the multiplexed path on the same tokenised batches, in
    one process, interleaved repetitions (SPEC 1.5). Both include embeddings; the multiplexed
    path includes prefill, f_down, mux, demux, f_up and the head. Tokenisation is excluded.
    ``threads``: torch CPU threads while timing (None: the process's setting; restored after)."""
    require(
        len(texts) >= 1 and repetitions >= 1,
        f"the benchmark needs >= 1 sample and >= 1 repetition, got {len(texts)} and {repetitions}",
    )
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _benchmark(teacher, mux, texts, batch_size, repetitions, progress)
    finally:
        torch.set_num_threads(previous)


def _benchmark(teacher, mux, texts: list, batch_size: int, repetitions: int, progress: bool) -> BenchResult:
    body = mux.body
    batch_size = whole_groups(batch_size, mux.config.n)
    batches = [body.tokenize(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
    teacher.eval()
    mux.eval()
    _time(teacher, batches[:2]), _time(mux, batches[:2])  # warm-up
    t_times, m_times = [], []
    loads = [_load()]
    for _ in tqdm(range(repetitions), desc="bench", leave=False, disable=not progress):
        t_times.append(_time(teacher, batches))
        m_times.append(_time(mux, batches))
        loads.append(_load())
    loads = [x for x in loads if x is not None]
    ratios = [t / m for t, m in zip(t_times, m_times, strict=True)]
    cfg = mux.config
    ceiling = speedup_ceiling(body.num_layers, cfg.prefill_layers, cfg.n)
    speedup = statistics.median(ratios)
    return BenchResult(
        len(texts) / statistics.median(t_times),
        len(texts) / statistics.median(m_times),
        speedup,
        min(ratios),
        max(ratios),
        ceiling,
        speedup / ceiling,
        cfg.n,
        cfg.prefill_layers,
        body.num_layers,
        batch_size,
        len(texts),
        repetitions,
        torch.get_num_threads(),
        device_name(body.device),
        max(loads) if loads else None,
        _cores(),
    )
