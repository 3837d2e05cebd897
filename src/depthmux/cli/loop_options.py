"""What the commands that run the generic LM training loop share (``lm train``, ``ee train``): their
options, declared once as ``Annotated`` types (each command sets its own default), and
:func:`loop_specs`, which turns them into the loop's settings and the data spec.

Options here stay generic: a command-specific default is written in the command's signature
(``steps: StepsOpt = 500``), so the help text lives in one place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

RunOutOpt = Annotated[Path, typer.Option("--out", help="Run folder: log.jsonl, checkpoints/, model/.")]
CorpusOpt = Annotated[str, typer.Option(help="shakespeare[:play] | kjv[:book] | PATH (.txt, .jsonl or a folder).")]
StepsOpt = Annotated[int, typer.Option(help="Optimizer steps.")]
LrOpt = Annotated[float, typer.Option(help="Peak learning rate (AdamW).")]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", help="Blocks per step (per process).")]
BlockSizeOpt = Annotated[int, typer.Option("--block-size", help="Tokens per block T.")]
WarmupOpt = Annotated[int, typer.Option(help="Linear warmup steps (WSD schedule).")]
DecayFractionOpt = Annotated[float, typer.Option(help="Share of steps in the final decay (WSD).")]
WeightDecayOpt = Annotated[float, typer.Option(help="AdamW weight decay (matrices only).")]
GradClipOpt = Annotated[float, typer.Option(help="Gradient-norm clip (0 = off).")]
HoldoutOpt = Annotated[float, typer.Option(help="Held-out share of documents (seeded split).")]
MaxTrainBlocksOpt = Annotated[int | None, typer.Option(help="Use at most this many training blocks.")]
MaxEvalBlocksOpt = Annotated[int | None, typer.Option(help="Evaluate on at most this many held-out blocks.")]
CheckpointEveryOpt = Annotated[
    int | None,
    typer.Option(help="Checkpoint every K steps (0 = only at the end; default: every 10% of the steps, at most 50)."),
]
EvalEveryOpt = Annotated[int, typer.Option(help="Evaluate every K steps (0 = only at the end).")]
ResumeOpt = Annotated[
    bool,
    typer.Option(
        "--resume",
        help="Continue the run in --out from its last checkpoint with its stored settings (exactly reproducible).",
    ),
]
ProgressOpt = Annotated[bool, typer.Option(help="Show a progress bar.")]
TeacherOpt = Annotated[
    str | None,
    typer.Option(help="Distillation teacher: smollm2 | a model folder (same vocabulary); needs --kd-weight > 0."),
]
KdWeightOpt = Annotated[float, typer.Option("--kd-weight", help="Weight of the KL to the teacher's logits (0 = off).")]
KdTemperatureOpt = Annotated[float, typer.Option("--kd-temperature", help="Distillation temperature tau.")]


def quiet_transformers() -> None:
    """No per-shard progress bars from transformers' save/load (our own bar shows training)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def train_loop_config(out: Path, *, resume: bool, steps, warmup, **fields):
    """The generic LM loop's settings. Unless resuming (the run's stored settings are used then), they
    are validated here and a warmup longer than ``--steps`` (the default with a short run) is cut to
    ``--steps``."""
    from depthmux.training.lm import LMTrainConfig

    cfg = LMTrainConfig(out_dir=str(out), resume=resume, steps=steps, warmup_steps=warmup, **fields)
    if not resume:
        cfg.validate()
        cfg.warmup_steps = min(cfg.warmup_steps, cfg.steps)
    return cfg


_DATA_FIELDS = ("corpus", "tokenizer", "block_size", "holdout", "max_train_blocks", "max_eval_blocks")


def loop_specs(out: Path, *, resume: bool, seed: int, **options):
    """``(LMTrainConfig, LMDataSpec)`` from a training command's options: the data fields
    (corpus, tokenizer, block_size, holdout, max_*_blocks) go to the data spec, the rest to
    :func:`train_loop_config`; ``seed`` to both. Both are validated unless resuming."""
    from depthmux.recipes.lm import LMDataSpec

    data = {k: options.pop(k) for k in _DATA_FIELDS if k in options}
    cfg = train_loop_config(out, resume=resume, seed=seed, **options)
    data_spec = LMDataSpec(seed=seed, **data)
    if not resume:
        data_spec.validate()
    return cfg, data_spec
