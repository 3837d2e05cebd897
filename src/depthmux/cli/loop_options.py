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


def out_folder(text: str) -> Path:
    """The ``--out`` parser of every command that writes a run folder (``lm``/``ee``/``mux train``, ``mux run``,
    ``mux sweep``): :func:`depthmux.utils.run_folder.out_path` (an empty value is refused)."""
    from depthmux.errors import DepthmuxError
    from depthmux.utils.run_folder import out_path

    try:
        return out_path(text)
    except DepthmuxError as e:
        raise typer.BadParameter(str(e)) from None


RunOutOpt = Annotated[
    Path,
    typer.Option(
        "--out",
        parser=out_folder,
        help="Run folder: log.jsonl, checkpoints/, model/. New, empty, or a depthmux run (resumed with --resume).",
    ),
]
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
        help="Continue the run in --out from its last checkpoint with its stored settings (exactly reproducible); "
        "an option given again with another value than the stored one is refused, naming it.",
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
    """The generic LM loop's settings. A warmup longer than ``--steps`` (the default with a short run) is
    cut to ``--steps``. Unless resuming (the run's stored settings are used then, see
    :func:`refuse_changed_settings`), they are validated here."""
    from depthmux.training.lm import LMTrainConfig

    cfg = LMTrainConfig(out_dir=str(out), resume=resume, steps=steps, warmup_steps=warmup, **fields)
    if not resume:
        cfg.validate()
    if isinstance(cfg.warmup_steps, int) and isinstance(cfg.steps, int):
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


#: parameters that are not settings of the run (never compared on --resume)
_NOT_SETTINGS = frozenset({"out", "resume", "progress"})
#: parameters stored under another field name
_FIELD_OF = {"warmup": "warmup_steps"}


def given_options(ctx: typer.Context) -> set[str]:
    """The parameters of the command that the user gave on the command line (not left at their default)."""
    sources = {name: ctx.get_parameter_source(name) for name in ctx.params}  # typer's own click: compare names
    return {name for name, src in sources.items() if src is not None and src.name not in ("DEFAULT", "DEFAULT_MAP")}


def setting_keys(names, sections: dict[str, object], stored_as: dict[str, str] | None = None) -> dict[str, object]:
    """``{dotted key in train_config.json: value}`` for the parameters ``names``: each is the field of
    the same name (``--warmup``: ``warmup_steps``) of the first spec in ``sections`` (``{key: spec}``,
    as ``train_config.json`` stores them) that has it; ``stored_as`` moves a key (``{"ee_model.exit_layer":
    "exit.exit_layer"}``: the value the run resolved). A parameter that is no setting is an error here."""
    from dataclasses import asdict

    keys: dict[str, object] = {}
    for name in sorted(set(names) - _NOT_SETTINGS):
        field = _FIELD_OF.get(name, name)
        section = next((sec for sec, spec in sections.items() if field in asdict(spec)), None)
        if section is None:
            raise KeyError(f"option {name!r} is stored in none of {', '.join(sections)}")
        key = f"{section}.{field}"
        keys[(stored_as or {}).get(key, key)] = asdict(sections[section])[field]
    return keys


def refuse_changed_settings(
    ctx: typer.Context, out: Path, sections: dict[str, object], stored_as: dict[str, str] | None = None
) -> None:
    """For ``--resume``: every option given on the command line must equal the run's stored setting, or
    the resume is refused with one line naming each difference. Options left out are not compared: a
    resume continues with the stored settings (``--resume`` alone is enough)."""
    from depthmux.utils.run_folder import RunFolder

    run = RunFolder(out)
    if not run.has_json("train_config"):
        return  # the recipe says, in one line, that there is nothing to resume
    given = setting_keys(given_options(ctx), sections, stored_as)
    nested: dict = {}
    for key, value in given.items():
        head, _, field = key.rpartition(".")
        nested.setdefault(head, {})[field] = value
    run.check_matches("train_config", nested, keys=list(given))
