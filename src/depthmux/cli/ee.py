"""``depthmux ee``: early exiting with a shallow-deep decoder (FREE, SPEC 2).

Thin over :mod:`depthmux.recipes.early_exit` (``run_ee_train``, ``run_ee_eval``, ``run_ee_bench``) and
:mod:`depthmux.recipes.exit_head` (``run_ee_train_head``, ``run_ee_sweep_layers``: issue 19 point 3): options
become validated specs (every number checked up front: one line, exit 2).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from depthmux.cli import loop_options as opt
from depthmux.cli.loop_options import loop_specs, quiet_transformers

app = typer.Typer(
    help="Early exit (FREE): train a shallow exit on a pretrained LLaMA (SmolLM2 by default) with the FREE "
    "loss, evaluate the held-out NLL of both exits, benchmark early-exit decoding in the engine, learn a cheap "
    "exit test (train-head), measure candidate exit layers (sweep-layers).",
    no_args_is_help=True,
    add_completion=False,
)


@app.command()
def train(
    ctx: typer.Context,
    out: opt.RunOutOpt,
    source: str = typer.Option(
        "smollm2", "--from", help="smollm2 (packaged SmolLM2-135M) or a LLaMA model folder (its tokenizer is used)."
    ),
    exit_layer: int | None = typer.Option(
        None, "--exit-layer", help="L_s, layers of the shallow exit, 1..L-1 (default: a quarter of the layers)."
    ),
    alpha: float = typer.Option(0.5, help="Weight of MSE(h_shallow, h_deep) in the FREE loss (SPEC 2)."),
    corpus: opt.CorpusOpt = "shakespeare",
    steps: opt.StepsOpt = 500,
    lr: opt.LrOpt = 2e-4,
    batch_size: opt.BatchSizeOpt = 8,
    block_size: opt.BlockSizeOpt = 256,
    warmup: opt.WarmupOpt = 20,
    decay_fraction: opt.DecayFractionOpt = 0.2,
    weight_decay: opt.WeightDecayOpt = 0.1,
    grad_clip: opt.GradClipOpt = 1.0,
    holdout: opt.HoldoutOpt = 0.1,
    max_train_blocks: opt.MaxTrainBlocksOpt = None,
    max_eval_blocks: opt.MaxEvalBlocksOpt = 64,
    checkpoint_every: opt.CheckpointEveryOpt = None,
    eval_every: opt.EvalEveryOpt = 0,
    resume: opt.ResumeOpt = False,
    teacher: opt.TeacherOpt = None,
    kd_weight: opt.KdWeightOpt = 0.0,
    kd_temperature: opt.KdTemperatureOpt = 1.0,
    seed: int = typer.Option(0, help="Seed for the split, packing order and batches."),
    progress: opt.ProgressOpt = True,
) -> None:
    """Train the shallow exit (and the deep model) with the FREE loss, starting from a pretrained LLaMA."""
    from depthmux.recipes.early_exit import EEModelSpec, run_ee_train

    quiet_transformers()
    model_spec = EEModelSpec(source=source, exit_layer=exit_layer, alpha=alpha)
    if not resume:
        model_spec.validate()
    cfg, data_spec = loop_specs(
        out, resume=resume, seed=seed, steps=steps, warmup=warmup, batch_size=batch_size, lr=lr,
        weight_decay=weight_decay, decay_fraction=decay_fraction, grad_clip=grad_clip,
        checkpoint_every=checkpoint_every, eval_every=eval_every, progress=progress, corpus=corpus,
        teacher=teacher, kd_weight=kd_weight, kd_temperature=kd_temperature,
        block_size=block_size, holdout=holdout, max_train_blocks=max_train_blocks, max_eval_blocks=max_eval_blocks,
    )  # fmt: skip
    if resume:
        sections = {"train": cfg, "data": data_spec, "ee_model": model_spec}
        opt.refuse_changed_settings(ctx, out, sections, stored_as={"ee_model.exit_layer": "exit.exit_layer"})
    res = run_ee_train(model_spec, data_spec, cfg)
    msg = f"step {res.step}: train loss {res.train_loss:.4f}, {res.train_flops:.3e} training FLOPs"
    if res.eval:
        msg += f", held-out deep NLL {res.eval['nll']:.4f}"
        agree = res.eval.get("router_stats", {}).get("exit_agreement")
        if agree is not None:
            msg += f", shallow-deep agreement {agree:.3f}"
    typer.echo(msg + f"; model in {out / 'model'}")


@app.command("eval")
def eval_(
    model: Path = typer.Option(..., "--model", help="A run folder (from `ee train`), a checkpoint or a model folder."),
    corpus: str | None = typer.Option(
        None, help="The corpus (default: the run's; required for a model folder without train_config.json)."
    ),
    block_size: int | None = typer.Option(None, "--block-size", help="Override the block size."),
    holdout: float | None = typer.Option(None, help="Override the held-out share."),
    seed: int | None = typer.Option(None, help="Override the split seed."),
    max_blocks: int | None = typer.Option(64, help="Evaluate at most this many held-out blocks."),
    batch_size: int = typer.Option(8, "--batch-size", help="Blocks per forward."),
    as_json: bool = typer.Option(False, "--json", help="Print the full result as JSON."),
) -> None:
    """Held-out NLL of the shallow and the deep exit of a saved early-exit model, and their agreement."""
    from depthmux.recipes.early_exit import run_ee_eval
    from depthmux.recipes.lm import eval_data_spec

    quiet_transformers()
    spec = eval_data_spec(model, corpus=corpus, block_size=block_size, holdout=holdout, seed=seed)
    if max_blocks is not None:
        spec.max_eval_blocks = max_blocks
    res = run_ee_eval(model, spec.validate(), batch_size=batch_size)
    if as_json:
        typer.echo(json.dumps(res, indent=2))
        return
    typer.echo(
        f"{res['model']}: deep NLL {res['deep']['nll']:.4f} (ppl {res['deep']['ppl']:.2f}), shallow exit "
        f"after {res['exit_layer']}/{res['num_layers']} layers NLL {res['shallow']['nll']:.4f} "
        f"(ppl {res['shallow']['ppl']:.2f}), argmax agreement {res['exit_agreement']:.3f} "
        f"({res['deep']['targets']} tokens of {res['corpus']})"
    )


def _numbers(option: str, text: str, kind: type) -> tuple:
    """``"1.0,0.9"`` -> (1.0, 0.9); an empty string -> (); anything else (``","`` too) is a one-line error."""
    from depthmux.errors import DepthmuxError

    parts = [p.strip() for p in text.split(",") if p.strip()]
    if text.strip() and not parts:
        raise DepthmuxError(f"{option} must be a comma-separated list of {kind.__name__}s, got {text!r}")
    try:
        return tuple(kind(p) for p in parts)
    except ValueError:
        raise DepthmuxError(f"{option} must be a comma-separated list of {kind.__name__}s, got {text!r}") from None


@app.command()
def bench(
    model: Path = typer.Option(..., "--model", help="A saved early-exit model (run, checkpoint or model folder)."),
    thresholds: str = typer.Option("1.0,0.9,0.8,0.6", help="Fixed exit thresholds in [0, 1] (FREE runs)."),
    deltas: str = typer.Option("", help="Wrong-exit bounds in (0, 1) for adaptive-threshold runs (e.g. 0.05,0.1)."),
    draft_tokens: str = typer.Option(
        "4", "--draft-tokens", help="Drafts k per verification (self-speculative runs; empty: none)."
    ),
    batch_sizes: str = typer.Option("1,16", "--batch-sizes", help="Sequences in flight at once."),
    prompts: int = typer.Option(16, "--prompts", help="Held-out prompts."),
    prompt_tokens: int = typer.Option(32, "--prompt-tokens", help="Tokens per prompt."),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", help="Tokens generated per prompt (greedy)."),
    rounds: int = typer.Option(1, help="Rounds of interleaved runs (the fastest counts)."),
    corpus: str | None = typer.Option(None, help="Prompt corpus (default: the run's held-out split)."),
    device: str = typer.Option("cpu", help="Device: cpu, cuda, cuda:1, ..."),
    plot: Path | None = typer.Option(None, "--plot", help="Write speed-up vs agreement to this image."),
    confidence: str | None = typer.Option(
        None, help="Exit test: margin (FREE) | head (from `ee train-head`); default: the model's own."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the full result as JSON."),
) -> None:
    """Early-exit decoding in the engine against the deep model: tokens/s, exit rate, agreement (SPEC 2)."""
    from depthmux.recipes.early_exit import EEBenchConfig, run_ee_bench

    quiet_transformers()
    cfg = EEBenchConfig(
        model=str(model),
        thresholds=_numbers("--thresholds", thresholds, float),
        deltas=_numbers("--deltas", deltas, float),
        draft_tokens=_numbers("--draft-tokens", draft_tokens, int),
        batch_sizes=_numbers("--batch-sizes", batch_sizes, int),
        num_prompts=prompts,
        prompt_tokens=prompt_tokens,
        max_new_tokens=max_new_tokens,
        rounds=rounds,
        corpus=corpus,
        device=device,
        plot=str(plot) if plot else None,
        confidence=confidence,
    )
    res = run_ee_bench(cfg.validate())
    if as_json:
        typer.echo(json.dumps(res, indent=2))
        return
    typer.echo(
        f"{res['model']}: exit after {res['exit_layer']}/{res['num_layers']} layers ({res['confidence']} "
        f"confidence), {res['prompts']} prompts, {res['max_new_tokens']} new tokens each, {res['device']}"
    )
    for r in res["results"]:
        extra = "".join(
            f", {k} {r[k]:.3f}" for k in ("exit_rate", "acceptance_rate", "wrong_exit_rate") if r.get(k) is not None
        )
        typer.echo(
            f"  batch {r['batch_size']:>3} {r['config']:<18} {r['tokens_per_s']:8.1f} tok/s  "
            f"x{r['speedup_vs_deep']:.2f}  agreement {r['token_agreement']:.3f}{extra}"
        )


@app.command("train-head")
def train_head(
    model: str = typer.Option(..., "--model", help="An early-exit model (run, checkpoint or model folder)."),
    out: Path = typer.Option(
        ..., "--out", help="New folder for the model with its confidence head (+ exit_head.json)."
    ),
    corpus: str | None = typer.Option(None, help="Corpus (default: the run's; required for a bare model folder)."),
    block_size: int | None = typer.Option(None, "--block-size", help="Override the block size."),
    train_blocks: int = typer.Option(64, "--train-blocks", help="Training blocks that give the labels."),
    eval_blocks: int = typer.Option(32, "--eval-blocks", help="Held-out blocks that judge the head."),
    steps: int = typer.Option(300, help="Adam steps of the head (on stored states: cheap)."),
    lr: float = typer.Option(1e-2, help="Learning rate of the head."),
    batch_size: int = typer.Option(4, "--batch-size", help="Blocks per frozen forward."),
    token_batch: int = typer.Option(4096, "--token-batch", help="Positions per head step."),
    thresholds: str = typer.Option(
        "0.5,0.6,0.7,0.8,0.9,0.95", help="Thresholds to report exit rate and agreement at (held-out)."
    ),
    seed: int = typer.Option(0, help="Seed of the head's minibatches."),
    l2: float | None = typer.Option(
        None, "--l2", help="L2 penalty on the head's standardised weights (default: chosen on a validation slice)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the full report as JSON."),
    progress: opt.ProgressOpt = True,
) -> None:
    """Learn a confidence head (CALM's early-exit classifier) so non-exiting tokens skip the shallow LM head."""
    from depthmux.recipes.exit_head import ExitHeadSpec, run_ee_train_head

    quiet_transformers()
    spec = ExitHeadSpec(
        model=model, out=str(out), corpus=corpus, block_size=block_size, train_blocks=train_blocks,
        eval_blocks=eval_blocks, steps=steps, lr=lr, batch_size=batch_size, token_batch=token_batch, seed=seed,
        thresholds=_numbers("--thresholds", thresholds, float), l2=l2,
    ).validate()  # fmt: skip
    res = run_ee_train_head(spec, log=(lambda m: typer.echo(m, err=True)) if as_json else typer.echo, progress=progress)
    if as_json:
        typer.echo(json.dumps(res, indent=2))
        return
    held = res["held_out"]
    typer.echo(f"train BCE {res['train_bce_first']:.4f} -> {res['train_bce_last20']:.4f} (mean of the last steps)")
    typer.echo("  threshold  head: exit rate  agreement of exits   margin: exit rate  agreement of exits")
    for h, m in zip(held["head"], held["margin"], strict=True):
        typer.echo(
            f"  {h['threshold']:9.2f}  {h['exit_rate']:15.3f}  {_opt(h['exit_agreement']):>18}   "
            f"{m['exit_rate']:17.3f}  {_opt(m['exit_agreement']):>18}"
        )
    typer.echo(f"model with its confidence head in {out}")


def _opt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


@app.command("sweep-layers")
def sweep_layers(
    model: str = typer.Option("smollm2", "--model", help="smollm2, a LLaMA model folder, or an early-exit model."),
    layers: str = typer.Option("4,8,12,16", help="Candidate exit layers L_s (each 1..L-1)."),
    corpus: str = typer.Option("shakespeare", help="Held-out text (shakespeare[:play] | kjv[:book] | PATH)."),
    block_size: int = typer.Option(128, "--block-size", help="Tokens per block."),
    holdout: float = typer.Option(0.1, help="Held-out share of documents (seeded split)."),
    seed: int = typer.Option(0, help="Split seed (and the heads' minibatches)."),
    eval_blocks: int = typer.Option(16, "--eval-blocks", help="Held-out blocks measured."),
    batch_size: int = typer.Option(4, "--batch-size", help="Blocks per forward."),
    thresholds: str = typer.Option("0.2,0.4,0.6,0.8,0.9", help="Margin (and head) thresholds to report."),
    head_steps: int = typer.Option(0, "--head-steps", help="Also fit a confidence head per layer (0: no heads)."),
    train_blocks: int = typer.Option(32, "--train-blocks", help="Training blocks for the heads' labels."),
    as_json: bool = typer.Option(False, "--json", help="Print the full result as JSON."),
    progress: opt.ProgressOpt = True,
) -> None:
    """Measure candidate exit layers without training: shallow-deep agreement, NLL, exit rate per threshold."""
    from depthmux.recipes.exit_head import SweepLayersSpec, run_ee_sweep_layers

    quiet_transformers()
    spec = SweepLayersSpec(
        model=model, layers=_numbers("--layers", layers, int), corpus=corpus, block_size=block_size,
        holdout=holdout, seed=seed, eval_blocks=eval_blocks, batch_size=batch_size,
        thresholds=_numbers("--thresholds", thresholds, float), head_steps=head_steps, train_blocks=train_blocks,
    ).validate()  # fmt: skip
    res = run_ee_sweep_layers(
        spec, log=(lambda m: typer.echo(m, err=True)) if as_json else typer.echo, progress=progress
    )
    if as_json:
        typer.echo(json.dumps(res, indent=2))
        return
    typer.echo(f"thresholds {', '.join(f'{t:g}' for t in res['thresholds'])}: exit rate / agreement of exits")
    for row in res["layers"]:
        for kind, table in (("margin", row["margin"]), ("head", row.get("head", {}).get("head"))):
            if table:
                cells = ", ".join(f"{r['exit_rate']:.2f}/{_opt(r['exit_agreement'])}" for r in table)
                typer.echo(f"  L_s {row['exit_layer']:>3} {kind:<6}: {cells}")
