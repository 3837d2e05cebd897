"""``depthmux lm``: train, evaluate and convert recursive / MoR language models (SPEC 3, SPEC 4).

Thin over :mod:`depthmux.recipes.lm` (``run_lm_train``, ``run_lm_eval``, ``run_lm_convert``):
options become validated specs (every number checked up front: one line, exit 2).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from depthmux.errors import DepthmuxError

app = typer.Typer(
    help="Recursive transformers and Mixture-of-Recursions: train from scratch or from SmolLM2, "
         "evaluate held-out NLL, convert a pretrained LLaMA into a recursive model.",
    no_args_is_help=True,
    add_completion=False,
)

def _quiet_transformers() -> None:
    """No per-shard progress bars from transformers' save/load (our own bar shows training)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


_SHARING = "none (vanilla) | cycle | sequence | middle_cycle | middle_sequence"


@app.command()
def train(
    out: Path = typer.Option(..., "--out", help="Run folder: log.jsonl, checkpoints/, model/."),
    corpus: str = typer.Option("shakespeare",
                               help="shakespeare[:play] | kjv[:book] | PATH (.txt, .jsonl or a folder)."),
    tokenizer: str = typer.Option("smollm2", help="smollm2 | bpe:N (byte-level BPE trained on the training split) | "
                                                  "a tokenizer folder. Ignored with --from-pretrained (its own)."),
    sharing: str = typer.Option("none", help=f"Layer sharing: {_SHARING}."),
    recursions: int = typer.Option(1, help="N_r, loops of the shared block (1 for vanilla)."),
    router: str = typer.Option("none", help="MoR router: none | expert | token (needs cycle/middle_cycle)."),
    kv: str = typer.Option("recursion_wise", help="MoR KV caching: recursion_wise | share_first."),
    hidden: int = typer.Option(256, help="Model width d (from scratch)."),
    layers: int = typer.Option(8, help="Effective depth L (from scratch)."),
    heads: int = typer.Option(4, help="Attention heads (from scratch)."),
    kv_heads: int | None = typer.Option(None, help="KV heads for GQA (default: --heads)."),
    intermediate: int | None = typer.Option(None, help="SwiGLU width (default 8/3 d, rounded up to 32)."),
    from_pretrained: str | None = typer.Option(None, "--from-pretrained",
                                                  help="smollm2 | a model folder: start from these weights."),
    convert: bool = typer.Option(False, "--convert", help="Convert --from-pretrained (LLaMA) into a recursive "
                                                          "model with --sharing/--recursions/--init/--lora-rank."),
    init: str = typer.Option("stepwise", help="Conversion init: stepwise | average | lower (SPEC 3)."),
    lora_rank: int = typer.Option(0, "--lora-rank", help="Per-loop LoRA relaxation rank (0 = off, SPEC 3)."),
    steps: int = typer.Option(1000, help="Optimizer steps."),
    lr: float = typer.Option(1e-3, help="Peak learning rate (AdamW)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Blocks per step (per process)."),
    block_size: int = typer.Option(256, "--block-size", help="Tokens per block T."),
    warmup: int = typer.Option(20, help="Linear warmup steps (WSD schedule)."),
    decay_fraction: float = typer.Option(0.2, help="Share of steps in the final decay (WSD)."),
    weight_decay: float = typer.Option(0.1, help="AdamW weight decay (matrices only)."),
    grad_clip: float = typer.Option(1.0, help="Gradient-norm clip (0 = off)."),
    holdout: float = typer.Option(0.1, help="Held-out share of documents (seeded split)."),
    max_train_blocks: int | None = typer.Option(None, help="Use at most this many training blocks."),
    max_eval_blocks: int | None = typer.Option(64, help="Evaluate on at most this many held-out blocks."),
    checkpoint_every: int | None = typer.Option(None, help="Checkpoint every K steps (0 = only at the end; "
                                                               "default: every 10% of the steps, at most 50)."),
    eval_every: int = typer.Option(0, help="Evaluate every K steps (0 = only at the end)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint "
                                                        "with its stored settings (exactly reproducible)."),
    seed: int = typer.Option(0, help="Seed for init, split, packing order and batches."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Train a vanilla / recursive / MoR decoder on packed documents (AdamW, WSD, clipping)."""
    from depthmux.lm import pretrained_model_dir
    from depthmux.recipes.lm import LMDataSpec, LMModelSpec, LMTrainConfig, run_lm_train

    _quiet_transformers()

    model_spec = LMModelSpec(sharing=sharing, recursions=recursions, router=router, kv=kv, hidden=hidden, layers=layers,
                             heads=heads, kv_heads=kv_heads, intermediate=intermediate, lora_rank=lora_rank,
                             from_pretrained=from_pretrained, convert=convert, init=init, seed=seed)
    cfg = LMTrainConfig(out_dir=str(out), steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                        warmup_steps=warmup, decay_fraction=decay_fraction, grad_clip=grad_clip,
                        checkpoint_every=checkpoint_every, eval_every=eval_every, resume=resume, seed=seed,
                        progress=progress)
    if not resume:
        model_spec.validate()
        cfg.validate()
        if isinstance(warmup, int) and isinstance(steps, int) and warmup > steps:
            cfg.warmup_steps = steps
        if from_pretrained:  # the pretrained model's own tokenizer
            tokenizer = "smollm2" if from_pretrained == "smollm2" else str(pretrained_model_dir(from_pretrained))
    data_spec = LMDataSpec(corpus=corpus, tokenizer=tokenizer, block_size=block_size, holdout=holdout, seed=seed,
                           max_train_blocks=max_train_blocks, max_eval_blocks=max_eval_blocks)
    if not resume:
        data_spec.validate()
    res = run_lm_train(model_spec, data_spec, cfg)
    msg = f"step {res.step}: train loss {res.train_loss:.4f}, {res.train_flops:.3e} training FLOPs"
    if res.eval:
        msg += f", held-out NLL {res.eval['nll']:.4f} (ppl {res.eval['ppl']:.2f})"
    typer.echo(msg + f"; model in {out / 'model'}")


@app.command("eval")
def eval_(
    model: Path = typer.Option(..., "--model", help="A run folder (from `lm train`), a checkpoint or a model folder."),
    corpus: str | None = typer.Option(None, help="The corpus (default: the run's; required for a model "
                                                    "folder without train_config.json)."),
    block_size: int | None = typer.Option(None, "--block-size", help="Override the block size."),
    holdout: float | None = typer.Option(None, help="Override the held-out share."),
    seed: int | None = typer.Option(None, help="Override the split seed."),
    max_blocks: int | None = typer.Option(64, help="Evaluate at most this many held-out blocks."),
    batch_size: int = typer.Option(8, "--batch-size", help="Blocks per forward."),
    routing: str | None = typer.Option(None, help="MoR expert-choice routing: topk | causal "
                                                     "(default: causal, plus top-k for the agreement)."),
    as_json: bool = typer.Option(False, "--json", help="Print the full result as JSON."),
) -> None:
    """Held-out NLL / perplexity (and MoR router statistics) of a saved model."""
    from depthmux.recipes.lm import eval_data_spec, run_lm_eval

    _quiet_transformers()

    if routing not in (None, "topk", "causal"):
        raise DepthmuxError(f"unknown routing '{routing}': use topk or causal")
    spec = eval_data_spec(model, corpus=corpus, block_size=block_size, holdout=holdout, seed=seed)
    if max_blocks is not None:
        spec.max_eval_blocks = max_blocks
    res = run_lm_eval(model, spec.validate(), batch_size=batch_size, routing=routing)
    if as_json:
        typer.echo(json.dumps(res, indent=2))
        return
    typer.echo(f"{res['model']}: held-out NLL {res['nll']:.4f}, ppl {res['ppl']:.2f} "
               f"({res['targets']} tokens of {res['corpus']}, {res['params']['total']:,} params)")
    rs = res.get("router_stats") or {}
    if rs.get("share_per_recursion"):
        typer.echo("  tokens per recursion: " + ", ".join(f"{x:.3f}" for x in rs["share_per_recursion"]))
    if "topk" in res:
        agree = res["topk"]["router_stats"].get("causal_agreement", [])
        typer.echo(f"  top-k routing NLL {res['topk']['nll']:.4f}; causal-vs-top-k agreement per recursion: "
                   + ", ".join(f"{a:.3f}" for a in agree))


@app.command()
def convert(
    out: Path = typer.Option(..., "--out", help="Folder for the recursive model (save_pretrained + tokenizer)."),
    source: str = typer.Option("smollm2", "--from", help="smollm2 (packaged SmolLM2-135M) or a LLaMA model folder."),
    recursions: int = typer.Option(3, help="N_r, loops of the shared block."),
    sharing: str = typer.Option("cycle", help=f"Layer sharing: {_SHARING}."),
    init: str = typer.Option("stepwise", help="stepwise | average | lower (SPEC 3)."),
    lora_rank: int = typer.Option(0, "--lora-rank", help="Per-loop LoRA rank, SVD-initialised (0 = off)."),
) -> None:
    """Convert a pretrained LLaMA (default SmolLM2-135M) into a (relaxed) recursive model folder."""
    from depthmux.recipes.lm import run_lm_convert

    _quiet_transformers()

    model, out = run_lm_convert(out, source, recursions=recursions, sharing=sharing, init=init, lora_rank=lora_rank)
    n = model.parameter_counts()["total"]
    typer.echo(f"recursive model ({sharing}, N_r={recursions}, init={init}, LoRA rank {lora_rank}, "
               f"{n:,} params) in {out}")
