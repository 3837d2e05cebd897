"""``depthmux mux``: RevMUX data multiplexing on a frozen encoder (SPEC 1).

Thin: each command parses its options into a config of :mod:`depthmux.recipes.mux`
(``ExperimentConfig``, ``MuxEvalConfig``, ``MuxBenchConfig``) or :mod:`depthmux.recipes.mux_sweeps`
(``SweepConfig``), whose ``validate()`` refuses a bad value with one line before any work, runs the
recipe and prints the result.

Data: a built-in ``--task``, or the user's own files (``--train``/``--dev``, optional ``--val``, with
``--text-column`` and ``--label-column``; CSV, TSV, JSON lines or Parquet).

Length: five commands whose options Typer needs declared one by one (train and sweep share most, as
the ``*Opt`` aliases); split up, the aliases would live in one file and their commands in others.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.console import Console

from depthmux.cli.loop_options import out_folder
from depthmux.errors import DepthmuxError, require

app = typer.Typer(
    help="RevMUX: N inputs share one pass of a frozen backbone; only small reversible adapters train.",
    no_args_is_help=True,
)
out_console = Console(width=None if sys.stdout.isatty() else 120)

TaskOpt = Annotated[
    str | None,
    typer.Option(
        help="sst2 | mrpc | rte | qnli (GLUE, needs --data-dir) or tweets (embedded, the default); "
        "not with --train/--dev."
    ),
]
DataDirOpt = Annotated[
    Path | None,
    typer.Option(help="Folder with GLUE TSVs (SST-2/, MRPC/, ...); default $DEPTHMUX_GLUE_DIR or ../shared/data/glue."),
]
ModelOpt = Annotated[
    str,
    typer.Option(
        help="'minilm' (packaged all-MiniLM-L6-v2), 'smollm2' (packaged SmolLM2-135M) or a local folder: BERT family, "
        "MPNet, DeBERTa-v2, ModernBERT, LLaMA/Mistral/Qwen2/Qwen3 or T5."
    ),
]
ThreadsOpt = Annotated[
    int | None, typer.Option(help="torch CPU threads, 1 to 4x the cores (at most 1024); default: torch's choice.")
]
DeviceOpt = Annotated[str, typer.Option(help="Where the backbone, features and adapters run: cpu, cuda or cuda:N.")]
TrainFileOpt = Annotated[
    Path | None,
    typer.Option("--train", help="Your own labelled training file (.csv, .tsv, .jsonl/.json, .parquet); needs --dev."),
]
DevFileOpt = Annotated[Path | None, typer.Option("--dev", help="Your own labelled file to report on (with --train).")]
ValFileOpt = Annotated[
    Path | None, typer.Option("--val", help="Your own validation file for model selection (default: --val-split).")
]
TextColumnOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--text-column",
        help="Text column of --train/--dev files (default 'text'); give two (repeat the option or 'a,b') for pairs.",
    ),
]
LabelColumnOpt = Annotated[str | None, typer.Option(help="Label column of --train/--dev files (default 'label').")]
ValSplitOpt = Annotated[
    float | None,
    typer.Option(help="Share of train held out (seeded) for model selection; default 0.1 (tweets: fixed split)."),
]
TeacherOpt = Annotated[
    str,
    typer.Option(
        help="probe: a linear probe on the frozen backbone (fast); finetune: fine-tune backbone + head on the task "
        "first, then freeze it (the paper's teacher); verbalizer: the frozen LM head on one label word per class "
        "after a task prompt (decoder-only and T5 models)."
    ),
]
FinetuneEpochsOpt = Annotated[int, typer.Option(help="Epochs of --teacher finetune (best on validation kept).")]
FinetuneLrOpt = Annotated[float, typer.Option(help="AdamW learning rate of the backbone under --teacher finetune.")]
PatienceOpt = Annotated[
    int | None,
    typer.Option(
        help="Stop after this many epochs without a better validation accuracy, once --min-steps are done "
        "(0: off; default 3)."
    ),
]
MinStepsOpt = Annotated[
    int | None,
    typer.Option(
        help="Small data: raise the epochs (up to 50) until this many optimizer steps (0: off; default 600, "
        "or 0 when --epochs is given); a raise is said in one line before training."
    ),
]
EpochsOpt = Annotated[
    int | None,
    typer.Option(
        help="Training epochs over the (sub-sampled) train split. Default 3, raised on small data by --min-steps; "
        "an explicit --epochs is trained as given (unless --min-steps is given too)."
    ),
]
LambdaInfoOpt = Annotated[float, typer.Option(help="λ, weight of the InfoNCE term (SPEC 1.3), in [0, 100].")]
TauOpt = Annotated[float, typer.Option(help="InfoNCE temperature τ, in [0.001, 10].")]
LrOpt = Annotated[
    float,
    typer.Option(
        help="AdamW learning rate for the adapters, in (0, 1]. A loss that is not finite, or over 100x its first "
        "value, stops the run (nothing saved as best)."
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]


def _ints(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise DepthmuxError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not values:
        raise DepthmuxError(f"{what} is empty")
    return values


def _floats(text: str, what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise DepthmuxError(f"{what} must be comma-separated numbers, got {text!r}") from None
    if not values:
        raise DepthmuxError(f"{what} is empty")
    return values


def _columns(values: list[str] | None) -> list[str] | None:
    """``--text-column a --text-column b`` or ``--text-column a,b`` -> ``["a", "b"]``."""
    if values is None:
        return None
    return [c.strip() for v in values for c in v.split(",")]


def _data_options(task, data_dir, train_file, dev_file, val_file, text_column, label_column, val_split) -> dict:
    """The data settings of an :class:`~depthmux.recipes.mux.ExperimentConfig`, from the shared options;
    ``task`` is None when ``--task`` was not given (then the embedded tweets, unless files are given)."""
    require(task is None or task.strip(), "--task is empty: give a task name (sst2, mrpc, rte, qnli or tweets)")
    require(
        task is None or not (train_file or dev_file or val_file),
        f"give --task {task} or --train/--dev files, not both (the files would replace the task)",
    )
    return dict(
        task=task or "tweets",
        data_dir=str(data_dir) if data_dir else None,
        train_file=str(train_file) if train_file else None,
        dev_file=str(dev_file) if dev_file else None,
        val_file=str(val_file) if val_file else None,
        text_columns=_columns(text_column),
        label_column=label_column,
        val_split=val_split,
    )


def _small_data_recipe(epochs: int | None, patience: int | None, min_steps: int | None) -> dict:
    """``--epochs``/``--patience``/``--min-steps``, unset ones from
    :data:`depthmux.recipes.mux.SMALL_DATA_RECIPE`. An explicit ``--epochs`` is trained as given: the
    ``--min-steps`` default (which raises the epochs on small data) then does not apply; an explicit
    ``--min-steps`` still does."""
    from depthmux.recipes.mux import DEFAULT_EPOCHS, SMALL_DATA_RECIPE

    given = {"patience": patience, "min_steps": min_steps}
    recipe = {k: SMALL_DATA_RECIPE[k] if v is None else v for k, v in given.items()}
    if epochs is not None and min_steps is None:
        recipe["min_steps"] = 0
    return {"epochs": DEFAULT_EPOCHS if epochs is None else epochs, **recipe}


def _threads(threads: int | None) -> None:
    from depthmux.utils.checks import check_threads

    check_threads("--threads", threads)
    if threads is not None:
        torch.set_num_threads(threads)


def _run_experiment(cfg, threads: int | None, as_json: bool) -> None:
    from depthmux.recipes.mux import run_experiment
    from depthmux.recipes.reports import results_table

    _threads(threads)
    rows = run_experiment(cfg)
    if as_json:
        print(json.dumps([r.as_dict() for r in rows], indent=2))
    else:
        label_names = json.loads((Path(cfg.out_dir) / "results.json").read_text()).get("label_names")
        out_console.print(results_table(rows, cfg.dataset, label_names))
        out_console.print(f"artifacts: {cfg.out_dir}/ (results.json, results.md, results.png, checkpoints)")


@app.command()
def train(
    task: TaskOpt = None,
    data_dir: DataDirOpt = None,
    train_file: TrainFileOpt = None,
    dev_file: DevFileOpt = None,
    val_file: ValFileOpt = None,
    text_column: TextColumnOpt = None,
    label_column: LabelColumnOpt = None,
    val_split: ValSplitOpt = None,
    teacher: TeacherOpt = "probe",
    finetune_epochs: FinetuneEpochsOpt = 3,
    finetune_lr: FinetuneLrOpt = 2e-5,
    model: ModelOpt = "minilm",
    n: Annotated[
        str, typer.Option(help="Inputs per pass, comma-separated (e.g. 2,4). N=1, the teacher, always runs.")
    ] = "2",
    prefill_layers: Annotated[
        str, typer.Option(help="l: layers each input runs alone before mixing, comma-separated.")
    ] = "0",
    mixer: Annotated[
        str, typer.Option(help="reversible | vanilla | datamux | ora (comma-separated for several).")
    ] = "reversible",
    epochs: EpochsOpt = None,
    batch_size: Annotated[int, typer.Option(help="Training batch size (inputs, not groups).")] = 32,
    lr: LrOpt = 1e-3,
    lambda_info: LambdaInfoOpt = 0.25,
    tau: TauOpt = 0.05,
    max_train: Annotated[int, typer.Option(help="Sub-sample the train split to this many examples (0: all).")] = 8000,
    shuffles: Annotated[int, typer.Option(help="Random groupings of the dev set for mean ± std (SPEC 1.4).")] = 10,
    bench: Annotated[bool, typer.Option(help="Also measure teacher vs multiplexed samples/s.")] = True,
    bench_samples: Annotated[int, typer.Option(help="Dev inputs timed per repetition.")] = 512,
    repetitions: Annotated[int, typer.Option(help="Interleaved benchmark repetitions.")] = 5,
    patience: PatienceOpt = None,
    min_steps: MinStepsOpt = None,
    seed: Annotated[int, typer.Option(help="Seed for sampling, initialisation and data order.")] = 0,
    out: Annotated[
        Path | None,
        typer.Option(
            parser=out_folder,
            help="Run folder for checkpoints and results (default: runs/mux-<data set>): new, empty, or a depthmux "
            "run (continued with --resume); a folder holding other files is refused.",
        ),
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue the run in --out from its last checkpoints (refused if its settings differ).")
    ] = False,
    threads: ThreadsOpt = None,
    device: DeviceOpt = "cpu",
    as_json: JsonOpt = False,
) -> None:
    """Train a frozen-backbone teacher (probe, or --teacher finetune), then RevMUX adapters for each N and l;
    evaluate on dev over random groupings and benchmark speed against the teacher. Data: a built-in
    --task, or your own --train/--dev files."""
    from depthmux.recipes.mux import ExperimentConfig, FinetuneConfig, MuxTrainConfig

    cfg = ExperimentConfig(
        **_data_options(task, data_dir, train_file, dev_file, val_file, text_column, label_column, val_split),
        teacher=teacher,
        finetune=FinetuneConfig(epochs=finetune_epochs, lr=finetune_lr, seed=seed),
        model=model,
        ns=_ints(n, "--n"),
        prefill_layers=_ints(prefill_layers, "--prefill-layers"),
        mixers=[m for m in mixer.split(",") if m],
        max_train=max_train or None,
        shuffles=shuffles,
        bench=bench,
        bench_samples=bench_samples,
        bench_repetitions=repetitions,
        resume=resume,
        device=device,
        train=MuxTrainConfig(
            batch_size=batch_size,
            lr=lr,
            lambda_info=lambda_info,
            tau=tau,
            seed=seed,
            **_small_data_recipe(epochs, patience, min_steps),
        ),
    )
    cfg.out_dir = str(out) if out is not None else f"runs/mux-{cfg.dataset}"
    _run_experiment(cfg, threads, as_json)


@app.command()
def run(
    out: Annotated[
        Path, typer.Option(parser=out_folder, help="Run folder: new, empty, or a previous `mux run` (continued).")
    ] = Path("runs/quickstart"),
    threads: ThreadsOpt = None,
) -> None:
    """The main job with no flags: RevMUX N=2, l=1 on frozen MiniLM, embedded tweets (negative vs
    positive); prints teacher vs multiplexed accuracy and speed (timed on one thread, 10 repetitions,
    unless --threads is given; a busy machine is said next to the figure). Run again, it resumes
    (reusing what was trained)."""
    from depthmux.recipes.mux import quickstart_config

    cfg = quickstart_config(str(out))
    if threads is not None:
        cfg.bench_threads = threads
    _run_experiment(cfg, threads, as_json=False)


@app.command("eval")
def evaluate(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint folder written by training (…/best).")],
    task: Annotated[str | None, typer.Option(help="Task to evaluate on (default: the checkpoint's task).")] = None,
    data_dir: DataDirOpt = None,
    split: Annotated[str, typer.Option(help="dev (reported) or validation.")] = "dev",
    shuffles: Annotated[int, typer.Option(help="Random groupings for mean ± std.")] = 10,
    seed: Annotated[int, typer.Option(help="Seed of the groupings.")] = 0,
    dev_file: Annotated[
        Path | None, typer.Option("--dev", help="Evaluate on your own labelled file instead of a task split.")
    ] = None,
    text_column: TextColumnOpt = None,
    label_column: LabelColumnOpt = None,
    threads: ThreadsOpt = None,
    device: DeviceOpt = "cpu",
    as_json: JsonOpt = False,
) -> None:
    """Accuracy (and F1) of a trained checkpoint over random groupings, with the teacher beside it."""
    from depthmux.recipes.mux import MuxEvalConfig, evaluate_checkpoint

    _threads(threads)
    report = evaluate_checkpoint(
        MuxEvalConfig(
            str(checkpoint),
            task,
            str(data_dir) if data_dir else None,
            split,
            shuffles,
            seed,
            str(dev_file) if dev_file else None,
            _columns(text_column),
            label_column,
            device,
        )
    )
    cfg, scores = report.config, {"teacher": report.teacher, "mux": report.mux}
    if as_json:
        print(json.dumps(report.as_dict(), indent=2))
        return
    from depthmux.recipes.reports import is_imbalanced

    what = f"N={cfg['n']} l={cfg['prefill_layers']} {cfg['mixer']}" if "n" in cfg else "teacher checkpoint"
    out_console.print(f"{report.task} {split} ({report.examples} examples), {what}")
    macro = is_imbalanced(scores["teacher"].support)  # multi-class or imbalanced: macro F1 (else label 1's F1)
    if macro:
        counts = zip(cfg["label_names"], scores["teacher"].support, strict=True)
        out_console.print("  examples per class: " + ", ".join(f"{name} {count}" for name, count in counts))

    def f1(score) -> str:
        mean, std = (score.macro_f1_mean, score.macro_f1_std) if macro else (score.f1_mean, score.f1_std)
        return f"{'macro ' if macro else ''}F1 {100 * mean:.2f} ± {100 * std:.2f}"

    out_console.print(f"  teacher (N=1): accuracy {scores['teacher']}   {f1(scores['teacher'])}")
    if scores["mux"] is not None:
        out_console.print(
            f"  multiplexed:   accuracy {scores['mux']}   {f1(scores['mux'])}  ({scores['mux'].shuffles} groupings)"
        )


@app.command()
def bench(
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            help="Trained checkpoint (…/best). Without it, adapters are "
            "randomly initialised: speed does not depend on their values."
        ),
    ] = None,
    model: ModelOpt = "minilm",
    n: Annotated[
        int | None, typer.Option(help="Inputs per pass, default 2 (without --checkpoint: it has its own).")
    ] = None,
    prefill_layers: Annotated[
        int | None, typer.Option(help="l, default 0 (without --checkpoint: it has its own).")
    ] = None,
    mixer: Annotated[
        str | None, typer.Option(help="Mixer, default reversible (without --checkpoint: it has its own).")
    ] = None,
    task: Annotated[
        str, typer.Option(help="sst2 | mrpc | rte | qnli (GLUE, needs --data-dir) or tweets (embedded).")
    ] = "tweets",
    data_dir: DataDirOpt = None,
    samples: Annotated[int, typer.Option(help="Dev inputs timed per repetition.")] = 512,
    batch_size: Annotated[int, typer.Option(help="Inputs per batch, the same for both paths.")] = 64,
    repetitions: Annotated[int, typer.Option(help="Interleaved repetitions (median ratio is reported).")] = 5,
    dev_file: Annotated[
        Path | None, typer.Option("--dev", help="Time your own texts (a data file) instead of the task's dev split.")
    ] = None,
    text_column: TextColumnOpt = None,
    threads: ThreadsOpt = None,
    device: DeviceOpt = "cpu",
    as_json: JsonOpt = False,
) -> None:
    """Samples/s of the teacher path and the multiplexed path, same inputs and batch size, one process,
    interleaved; prints both, their ratio and the ceiling L / (l + (L - l)/N)."""
    from depthmux.recipes.mux import MuxBenchConfig, benchmark_checkpoint

    if checkpoint is not None:
        given = [o for o, v in (("--n", n), ("--prefill-layers", prefill_layers), ("--mixer", mixer)) if v is not None]
        require(not given, f"{', '.join(given)}: not with --checkpoint (the checkpoint sets N, l and the mixer)")
    _threads(threads)
    r = benchmark_checkpoint(
        MuxBenchConfig(
            str(checkpoint) if checkpoint else None,
            model,
            2 if n is None else n,
            0 if prefill_layers is None else prefill_layers,
            "reversible" if mixer is None else mixer,
            task,
            str(data_dir) if data_dir else None,
            samples,
            batch_size,
            repetitions,
            str(dev_file) if dev_file else None,
            _columns(text_column),
            device,
        )
    )
    if as_json:
        print(json.dumps(r.as_dict(), indent=2))
        return
    source = dev_file.stem if dev_file else task
    out_console.print(
        f"{r.samples} {source} dev inputs, batch {r.batch_size}, {r.repetitions} interleaved repetitions, "
        + (f"{r.threads} thread(s)" if r.device == "cpu" else r.device)
    )
    out_console.print(f"  teacher (N=1):      {r.teacher_samples_per_s:8.1f} samples/s")
    out_console.print(f"  multiplexed (N={r.n}, l={r.prefill_layers}): {r.mux_samples_per_s:8.1f} samples/s")
    out_console.print(
        f"  speedup {r.speedup:.2f}x (min {r.speedup_min:.2f}, max {r.speedup_max:.2f}); ceiling "
        f"L/(l+(L-l)/N) = {r.ceiling:.2f}x; {100 * r.fraction_of_ceiling:.0f}% of ceiling"
    )
    if r.busy():
        out_console.print(f"  warning: {r.busy()}")


@app.command()
def sweep(
    task: Annotated[
        str | None,
        typer.Option(
            help="Built-in task(s), comma-separated (sst2,mrpc,rte,qnli need --data-dir), or tweets (the default); "
            "not with --train/--dev."
        ),
    ] = None,
    data_dir: DataDirOpt = None,
    train_file: TrainFileOpt = None,
    dev_file: DevFileOpt = None,
    val_file: ValFileOpt = None,
    text_column: TextColumnOpt = None,
    label_column: LabelColumnOpt = None,
    val_split: ValSplitOpt = None,
    teacher: TeacherOpt = "probe",
    finetune_epochs: FinetuneEpochsOpt = 3,
    finetune_lr: FinetuneLrOpt = 2e-5,
    model: ModelOpt = "minilm",
    n: Annotated[str, typer.Option(help="N values, comma-separated (e.g. 2,3,4,6,8).")] = "2,4",
    prefill_layers: Annotated[str, typer.Option(help="l values, comma-separated (e.g. 0,1,3).")] = "0",
    lambda_info: Annotated[
        str, typer.Option("--lambda", help="λ values of the InfoNCE term, comma-separated (e.g. 0,0.25,0.5,1).")
    ] = "0.25",
    mixer: Annotated[str, typer.Option(help="Mixers, comma-separated: reversible,vanilla,datamux,ora.")] = "reversible",
    seeds: Annotated[str, typer.Option(help="Training seeds of the adapters, comma-separated.")] = "0,1,2",
    max_train: Annotated[
        str, typer.Option(help="Train-set sizes, comma-separated (0: all); several give a learning curve.")
    ] = "8000",
    epochs: EpochsOpt = None,
    batch_size: Annotated[int, typer.Option(help="Training batch size (inputs, not groups).")] = 32,
    lr: LrOpt = 1e-3,
    patience: PatienceOpt = None,
    min_steps: MinStepsOpt = None,
    shuffles: Annotated[int, typer.Option(help="Random groupings of the dev set for mean ± std (SPEC 1.4).")] = 10,
    bench: Annotated[bool, typer.Option(help="Measure each (N, l, mixer)'s speedup once (Pareto plot).")] = True,
    bench_samples: Annotated[int, typer.Option(help="Dev inputs timed per repetition.")] = 512,
    repetitions: Annotated[int, typer.Option(help="Interleaved benchmark repetitions.")] = 5,
    seed: Annotated[int, typer.Option(help="Seed of the data sample and the teacher (cells use --seeds).")] = 0,
    out: Annotated[
        Path,
        typer.Option(
            parser=out_folder, help="Sweep folder (new, empty, or a sweep); rerun the same command to continue it."
        ),
    ] = Path("runs/sweep"),
    threads: ThreadsOpt = None,
    device: DeviceOpt = "cpu",
) -> None:
    """Every cell of N × l × λ × mixer × seed (× train size): resumable (finished cells are skipped), the
    teacher and the frozen features shared per train size; writes sweep_results.json/.md, a Pareto plot
    of accuracy vs measured speedup and, with several --max-train sizes, the learning curve."""
    from depthmux.recipes.mux import ExperimentConfig, FinetuneConfig, MuxTrainConfig
    from depthmux.recipes.mux_sweeps import SweepConfig, aggregate, run_sweep, sweep_markdown

    _threads(threads)
    tasks = [t.strip() for t in (task if task is not None else "tweets").split(",") if t.strip()] or [task]
    experiment = ExperimentConfig(
        **_data_options(
            None if task is None else tasks[0],
            data_dir,
            train_file,
            dev_file,
            val_file,
            text_column,
            label_column,
            val_split,
        ),
        teacher=teacher,
        finetune=FinetuneConfig(epochs=finetune_epochs, lr=finetune_lr, seed=seed),
        model=model,
        ns=_ints(n, "--n"),
        prefill_layers=_ints(prefill_layers, "--prefill-layers"),
        mixers=[m for m in mixer.split(",") if m],
        shuffles=shuffles,
        bench=bench,
        bench_samples=bench_samples,
        bench_repetitions=repetitions,
        device=device,
        train=MuxTrainConfig(
            batch_size=batch_size, lr=lr, seed=seed, **_small_data_recipe(epochs, patience, min_steps)
        ),
    )
    cfg = SweepConfig(
        experiment,
        tasks=tasks if len(tasks) > 1 else None,
        lambdas=_floats(lambda_info, "--lambda"),
        seeds=_ints(seeds, "--seeds"),
        max_trains=[m or None for m in _ints(max_train, "--max-train")],
        out_dir=str(out),
    )
    rows = run_sweep(cfg)
    out_console.print(sweep_markdown(aggregate(rows)))
    out_console.print(f"artifacts: {out}/ (sweep_results.json, sweep_results.md, pareto-*.png, one folder per cell)")


@app.command()
def predict(
    checkpoint: Annotated[Path, typer.Argument(help="Trained checkpoint folder (multiplexed or teacher).")],
    input_file: Annotated[
        Path, typer.Option("--input", help="Data file to score: .csv, .tsv, .jsonl or .parquet (read in chunks).")
    ],
    out: Annotated[Path, typer.Option(help="Where to write the scored copy (same format; written atomically).")],
    text_column: TextColumnOpt = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out (refused otherwise).")] = False,
    batch_size: Annotated[int, typer.Option(help="Inputs per forward (a multiple of N is used).")] = 64,
    chunk_rows: Annotated[int, typer.Option(help="Rows read and written at a time (bounds memory).")] = 4096,
    threads: ThreadsOpt = None,
    device: DeviceOpt = "cpu",
    as_json: JsonOpt = False,
    ray: Annotated[
        bool,
        typer.Option(
            "--ray",
            help="Run on Ray Data (Parquet/CSV/TSV in, a folder of Parquet files out): an actor pool holding the "
            "classifier; joins RAY_ADDRESS if set, else starts a local Ray on 127.0.0.1.",
        ),
    ] = False,
    actors: Annotated[int, typer.Option(help="--ray: actors, each with one copy of the classifier.")] = 1,
    cpus_per_actor: Annotated[float, typer.Option(help="--ray: CPUs per actor (its torch threads).")] = 1.0,
) -> None:
    """Add the predicted label and per-class probabilities (predicted_label, prob_<label>) to every row of a
    file, N rows per backbone pass; every row is checked first (a bad one is one line naming its line).
    With --ray the same batches run on Ray Data (same outputs), and --out is a folder of Parquet files."""
    _threads(threads)
    if ray:
        from depthmux.recipes.ray_predict import RayPredictConfig, predict_with_ray

        s = predict_with_ray(
            RayPredictConfig(
                checkpoint=str(checkpoint),
                input=str(input_file),
                out=str(out),
                text_columns=_columns(text_column) or ["text"],
                batch_size=batch_size,
                actors=actors,
                cpus_per_actor=cpus_per_actor,
                overwrite=overwrite,
            )
        )
        if as_json:
            print(json.dumps(s.as_dict(), indent=2))
            return
        counts = ", ".join(f"{k}: {v}" for k, v in s.label_counts.items())
        out_console.print(
            f"{s.rows} rows in {s.seconds:.1f} s ({s.rows_per_s:.1f} rows/s, {s.actors} actor(s)) "
            f"-> {s.out}/ ({counts})"
        )
        return
    from depthmux.recipes.mux_predict import MuxPredictConfig, predict_file

    cfg = MuxPredictConfig(
        checkpoint=str(checkpoint),
        input=str(input_file),
        out=str(out),
        text_columns=_columns(text_column) or ["text"],
        overwrite=overwrite,
        batch_size=batch_size,
        chunk_rows=chunk_rows,
        device=device,
    )
    s = predict_file(cfg, progress=not as_json)
    if as_json:
        print(json.dumps(s.as_dict(), indent=2))
        return
    counts = ", ".join(f"{k}: {v}" for k, v in s.label_counts.items())
    out_console.print(f"{s.rows} rows in {s.seconds:.1f} s ({s.rows_per_s:.1f} rows/s) -> {s.out} ({counts})")
