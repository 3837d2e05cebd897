"""``depthmux lm``: train, evaluate and convert recursive / MoR language models (SPEC 3, SPEC 4).

Thin over :mod:`depthmux.recipes.lm` (``run_lm_train``, ``run_lm_eval``, ``run_lm_convert``),
:mod:`depthmux.recipes.mor_smollm2` (``build-mor``), :mod:`depthmux.recipes.decode_bench`
(``bench-decode``) and the decode engine (``generate``): options become validated specs (every
number checked up front: one line, exit 2).

Length: one sub-app, thin: each command only parses options into a recipe's config and prints.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from depthmux.cli import loop_options as opt
from depthmux.cli.loop_options import loop_specs, quiet_transformers
from depthmux.errors import DepthmuxError

app = typer.Typer(
    help="Recursive transformers and Mixture-of-Recursions: train from scratch or from SmolLM2, "
    "evaluate held-out NLL, convert a pretrained LLaMA into a recursive model.",
    no_args_is_help=True,
    add_completion=False,
)


_SHARING = "none (vanilla) | cycle | sequence | middle_cycle | middle_sequence"


@app.command()
def train(
    ctx: typer.Context,
    out: opt.RunOutOpt,
    corpus: opt.CorpusOpt = "shakespeare",
    tokenizer: str = typer.Option(
        "smollm2",
        help="smollm2 | bpe:N (byte-level BPE trained on the training split) | "
        "a tokenizer folder. Ignored with --from-pretrained (its own).",
    ),
    sharing: str = typer.Option("none", help=f"Layer sharing: {_SHARING}."),
    recursions: int = typer.Option(1, help="N_r, loops of the shared block (1 for vanilla)."),
    router: str = typer.Option("none", help="MoR router: none | expert | token (needs cycle/middle_cycle)."),
    kv: str = typer.Option("recursion_wise", help="MoR KV caching: recursion_wise | share_first."),
    hidden: int = typer.Option(256, help="Model width d (from scratch)."),
    layers: int = typer.Option(8, help="Effective depth L (from scratch)."),
    heads: int = typer.Option(4, help="Attention heads (from scratch)."),
    kv_heads: int | None = typer.Option(None, help="KV heads for GQA (default: --heads)."),
    intermediate: int | None = typer.Option(None, help="SwiGLU width (default 8/3 d, rounded up to 32)."),
    from_pretrained: str | None = typer.Option(
        None, "--from-pretrained", help="smollm2 | a model folder: start from these weights."
    ),
    convert: bool = typer.Option(
        False,
        "--convert",
        help="Convert --from-pretrained (LLaMA) into a recursive model with --sharing/--recursions/--init/--lora-rank.",
    ),
    init: str = typer.Option("stepwise", help="Conversion init: stepwise | average | lower (SPEC 3)."),
    lora_rank: int = typer.Option(0, "--lora-rank", help="Per-loop LoRA relaxation rank (0 = off, SPEC 3)."),
    steps: opt.StepsOpt = 1000,
    lr: opt.LrOpt = 1e-3,
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
    seed: int = typer.Option(0, help="Seed for init, split, packing order and batches."),
    progress: opt.ProgressOpt = True,
) -> None:
    """Train a vanilla / recursive / MoR decoder on packed documents (AdamW, WSD, clipping)."""
    from depthmux.lm import pretrained_model_dir
    from depthmux.recipes.lm import LMModelSpec, run_lm_train

    quiet_transformers()

    model_spec = LMModelSpec(
        sharing=sharing,
        recursions=recursions,
        router=router,
        kv=kv,
        hidden=hidden,
        layers=layers,
        heads=heads,
        kv_heads=kv_heads,
        intermediate=intermediate,
        lora_rank=lora_rank,
        from_pretrained=from_pretrained,
        convert=convert,
        init=init,
        seed=seed,
    )
    if not resume:
        model_spec.validate()
    if not resume and from_pretrained:  # the pretrained model's own tokenizer
        tokenizer = "smollm2" if from_pretrained == "smollm2" else str(pretrained_model_dir(from_pretrained))
    cfg, data_spec = loop_specs(
        out, resume=resume, seed=seed, steps=steps, warmup=warmup, batch_size=batch_size, lr=lr,
        weight_decay=weight_decay, decay_fraction=decay_fraction, grad_clip=grad_clip,
        checkpoint_every=checkpoint_every, eval_every=eval_every, progress=progress, corpus=corpus,
        teacher=teacher, kd_weight=kd_weight, kd_temperature=kd_temperature,
        tokenizer=tokenizer, block_size=block_size, holdout=holdout, max_train_blocks=max_train_blocks,
        max_eval_blocks=max_eval_blocks,
    )  # fmt: skip
    if resume:
        opt.refuse_changed_settings(ctx, out, {"train": cfg, "data": data_spec, "model_spec": model_spec})
    res = run_lm_train(model_spec, data_spec, cfg)
    msg = f"step {res.step}: train loss {res.train_loss:.4f}, {res.train_flops:.3e} training FLOPs"
    if res.eval:
        msg += f", held-out NLL {res.eval['nll']:.4f} (ppl {res.eval['ppl']:.2f})"
    typer.echo(msg + f"; model in {out / 'model'}")


@app.command("eval")
def eval_(
    model: Path = typer.Option(
        ..., "--model", help="A run folder (from `lm train`), a checkpoint, a model folder, or smollm2."
    ),
    corpus: str | None = typer.Option(
        None, help="The corpus (default: the run's; required for a model folder without train_config.json)."
    ),
    block_size: int | None = typer.Option(None, "--block-size", help="Override the block size."),
    holdout: float | None = typer.Option(None, help="Override the held-out share."),
    seed: int | None = typer.Option(None, help="Override the split seed."),
    max_blocks: int | None = typer.Option(64, help="Evaluate at most this many held-out blocks."),
    batch_size: int = typer.Option(8, "--batch-size", help="Blocks per forward."),
    routing: str | None = typer.Option(
        None, help="MoR expert-choice routing: topk | causal (default: causal, plus top-k for the agreement)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the full result as JSON."),
    tasks: str | None = typer.Option(
        None,
        "--tasks",
        help="Few-shot tasks through lm-evaluation-harness instead of the NLL (comma-separated or 'all'): "
        "depthmux_sst2, depthmux_cloze_shakespeare, depthmux_cloze_kjv. --model may then be smollm2.",
    ),
    num_fewshot: int | None = typer.Option(None, "--num-fewshot", help="--tasks: shots (default: the task's)."),
    limit: int | None = typer.Option(None, "--limit", help="--tasks: evaluate at most this many examples a task."),
    exit_: str = typer.Option("deep", "--exit", help="--tasks, early-exit models: deep | shallow."),
    data_dir: str | None = typer.Option(None, "--data-dir", help="--tasks: GLUE folder (default ../shared/data/glue)."),
    progress: opt.ProgressOpt = True,
) -> None:
    """Held-out NLL / perplexity (and MoR router statistics) of a saved model, or few-shot accuracy (--tasks)."""
    from depthmux.recipes.lm import eval_data_spec, run_lm_eval

    quiet_transformers()
    if tasks is not None:
        from depthmux.recipes.fewshot import FEWSHOT_TASKS, FewshotEvalConfig, run_fewshot_eval

        names = FEWSHOT_TASKS if tasks.strip() == "all" else tuple(t.strip() for t in tasks.split(",") if t.strip())
        cfg = FewshotEvalConfig(
            model=str(model), tasks=names, num_fewshot=num_fewshot, limit=limit, batch_size=batch_size,
            exit=exit_, data_dir=data_dir,
        ).validate()  # fmt: skip
        res = run_fewshot_eval(cfg)
        if as_json:
            typer.echo(json.dumps(res, indent=2))
            return
        for name, metrics in res["tasks"].items():
            shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
            typer.echo(f"{name} ({res['n_samples'].get(name, '?')} examples): {shown}")
        return

    if routing not in (None, "topk", "causal"):
        raise DepthmuxError(f"unknown routing '{routing}': use topk or causal")
    from depthmux.utils.checks import check_int

    check_int("--max-blocks", max_blocks, 1, allow_none=True)
    if str(model) == "smollm2" and not model.exists():  # the packaged model, as everywhere else
        from depthmux.lm import pretrained_model_dir

        model = pretrained_model_dir("smollm2")
    spec = eval_data_spec(model, corpus=corpus, block_size=block_size, holdout=holdout, seed=seed)
    if max_blocks is not None:
        spec.max_eval_blocks = max_blocks
    res = run_lm_eval(model, spec.validate(), batch_size=batch_size, routing=routing, progress=progress)
    if as_json:
        typer.echo(json.dumps(res, indent=2))
        return
    typer.echo(
        f"{res['model']}: held-out NLL {res['nll']:.4f}, ppl {res['ppl']:.2f} "
        f"({res['targets']} tokens of {res['corpus']}, {res['params']['total']:,} params)"
    )
    rs = res.get("router_stats") or {}
    if rs.get("share_per_recursion"):
        typer.echo("  tokens per recursion: " + ", ".join(f"{x:.3f}" for x in rs["share_per_recursion"]))
    if "topk" in res:
        agree = res["topk"]["router_stats"].get("causal_agreement", [])
        typer.echo(
            f"  top-k routing NLL {res['topk']['nll']:.4f}; causal-vs-top-k agreement per recursion: "
            + ", ".join(f"{a:.3f}" for a in agree)
        )


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

    quiet_transformers()

    model, out = run_lm_convert(out, source, recursions=recursions, sharing=sharing, init=init, lora_rank=lora_rank)
    n = model.parameter_counts()["total"]
    typer.echo(
        f"recursive model ({sharing}, N_r={recursions}, init={init}, LoRA rank {lora_rank}, {n:,} params) in {out}"
    )


def _stop_token_ids(stops: list[str], tokenizer) -> tuple[int, ...]:
    """``--stop`` values: a token id, or a string that is exactly one token of the model's tokenizer."""
    ids = []
    for s in stops:
        if s.isdigit():
            ids.append(int(s))
            continue
        if tokenizer is None:
            raise DepthmuxError(f"--stop {s!r}: the model has no tokenizer, give a token id")
        toks = tokenizer(s, add_special_tokens=False)["input_ids"]
        if len(toks) != 1:
            raise DepthmuxError(f"--stop {s!r} is {len(toks)} tokens: give a single-token string or a token id")
        ids.append(toks[0])
    return tuple(ids)


def _prompt_lines(file: Path) -> list[str]:
    """The non-blank lines of a UTF-8 text file; a folder, a missing file, another encoding or binary
    content is one line naming the file."""
    if file.is_dir():
        raise DepthmuxError(f"--file {file} is a folder: give a text file with one prompt per line")
    if not file.is_file():
        raise DepthmuxError(f"--file {file}: no such file")
    try:
        raw = file.read_bytes()
    except OSError as e:
        raise DepthmuxError(f"--file {file}: cannot read it ({e.strerror or e})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DepthmuxError(
            f"--file {file} is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}): save it as UTF-8"
        ) from None
    if "\x00" in text:
        raise DepthmuxError(f"--file {file} holds NUL bytes (offset {text.index(chr(0))}): not a text file")
    return [line for line in text.splitlines() if line.strip()]


@app.command()
def generate(
    prompts: list[str] | None = typer.Argument(None, help="Prompts (each one request)."),
    file: Path | None = typer.Option(None, "--file", help="A file with one prompt per line."),
    model: str = typer.Option("smollm2", "--model", help="smollm2 | a model, checkpoint or run folder."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", help="Tokens to generate at most per prompt."),
    temperature: float = typer.Option(0.0, help="0 = greedy; > 0 samples."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling mass (0, 1]."),
    seed: int | None = typer.Option(None, help="Sampling seed (per request; same tokens whatever the batch)."),
    stop: list[str] | None = typer.Option(
        None, "--stop", help="Stop token: a single-token string or a token id (repeatable). EOS always stops."
    ),
    depth_policy: str = typer.Option("depthwise", "--depth-policy", help="depthwise | lockstep (recursive models)."),
    max_batch: int = typer.Option(16, "--max-batch", help="B: most sequences and block items per step."),
) -> None:
    """Generate with the decode engine, streaming each prompt's text to the terminal in prompt order."""
    from depthmux.engine import LLM, SamplingParams
    from depthmux.utils.checks import check_int

    quiet_transformers()
    texts = list(prompts or [])
    if file is not None:
        texts += _prompt_lines(file)
    if not texts:
        raise DepthmuxError("no prompts: give them as arguments or with --file")
    if any(not t.strip() for t in texts):
        raise DepthmuxError("empty prompt")
    check_int("--max-batch", max_batch, 1)
    SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)  # checks first
    llm = LLM.from_pretrained(model, depth_policy=depth_policy, max_batch_items=max_batch, max_num_seqs=max_batch)
    if llm.tokenizer is None:
        raise DepthmuxError(f"{model} has no saved tokenizer: text prompts need one")
    params = SamplingParams(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        stop_token_ids=_stop_token_ids(stop or [], llm.tokenizer),
    )
    ids = [llm.add_request(t, params) for t in texts]
    order = {rid: i for i, rid in enumerate(ids)}
    texts_now: dict[str, str] = {}
    finished: set[str] = set()
    shown, printed = 0, 0  # the prompt being streamed, and how much of its text is on screen

    def flush() -> None:
        nonlocal shown, printed
        while shown < len(ids):
            rid = ids[shown]
            if printed == 0:
                typer.echo(f"[{shown}] {texts[shown]}", nl=False)
            text = texts_now.get(rid, "")
            typer.echo(text[printed:], nl=False)
            printed = len(text)
            if rid not in finished:
                return
            typer.echo("")
            shown, printed = shown + 1, 0

    while llm.has_unfinished_requests():
        for out in llm.step():
            if out.request_id in order:
                texts_now[out.request_id] = out.text or ""
                if out.finished:
                    finished.add(out.request_id)
        flush()
    flush()


@app.command("build-mor")
def build_mor(
    out: Path = typer.Option(Path("runs/smollm2-mor"), "--out", help="Run folder (model in <out>/model)."),
    recursions: int = typer.Option(4, help="N_r (must divide SmolLM2's 28 middle layers: 2, 4, 7, 14)."),
    steps: int = typer.Option(24, help="Uptraining steps."),
    batch_size: int = typer.Option(4, "--batch-size", help="Blocks per step."),
    block_size: int = typer.Option(128, "--block-size", help="Tokens per block."),
    lr: float = typer.Option(5e-4, help="Peak learning rate."),
    bce_coef: float = typer.Option(0.1, "--bce-coef", help="Router BCE coefficient (causal rule)."),
    corpus: str = typer.Option("shakespeare", help="Uptraining corpus (shakespeare | kjv | PATH)."),
    eval_blocks: int = typer.Option(16, "--eval-blocks", help="Held-out blocks for the NLL."),
    seed: int = typer.Option(0, help="Seed."),
    kd_weight: opt.KdWeightOpt = 0.0,
    kd_temperature: opt.KdTemperatureOpt = 1.0,
    eval_every: opt.EvalEveryOpt = 0,
    progress: opt.ProgressOpt = True,
) -> None:
    """Convert SmolLM2-135M into a middle-cycle MoR model (expert-choice), uptrain it briefly and save it."""
    from depthmux.recipes.mor_smollm2 import MoRSmolLM2Spec, run_mor_smollm2

    quiet_transformers()
    spec = MoRSmolLM2Spec(
        out_dir=str(out),
        recursions=recursions,
        steps=steps,
        batch_size=batch_size,
        block_size=block_size,
        lr=lr,
        bce_coef=bce_coef,
        corpus=corpus,
        eval_blocks=eval_blocks,
        seed=seed,
        kd_weight=kd_weight,
        kd_temperature=kd_temperature,
        eval_every=eval_every,
    )
    res = run_mor_smollm2(spec, log=typer.echo, progress=progress)
    typer.echo(
        f"held-out NLL: SmolLM2 {res['smollm2']['nll']:.4f}, "
        f"recursive-{recursions} {res['recursive']['nll']:.4f}, MoR-{recursions} {res['mor']['nll']:.4f}; "
        f"model in {out / 'model'}"
    )


@app.command("calibrate-router")
def calibrate_router(
    model: str = typer.Option(..., "--model", help="An expert-choice MoR model (run, checkpoint or model folder)."),
    out: Path = typer.Option(..., "--out", help="New folder for the calibrated model (+ calibration.json)."),
    corpus: str | None = typer.Option(None, help="Held-out corpus (default: the run's)."),
    block_size: int | None = typer.Option(None, "--block-size", help="Override the block size."),
    cal_blocks: int = typer.Option(32, "--cal-blocks", help="Held-out blocks that choose the thresholds."),
    eval_blocks: int = typer.Option(16, "--eval-blocks", help="The next held-out blocks, for the before/after report."),
    batch_size: int = typer.Option(4, "--batch-size", help="Blocks per forward."),
    on: str = typer.Option(
        "corpus",
        "--on",
        help="Fit on corpus text | generated (the model's greedy continuations, what decoding routes).",
    ),
    prompt_tokens: int | None = typer.Option(
        None, "--prompt-tokens", help="Prompt length for the continuations (default: half the block)."
    ),
    rounds: int = typer.Option(2, "--rounds", help="--on generated: generate-and-fit rounds."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    progress: opt.ProgressOpt = True,
) -> None:
    """Choose per-recursion thresholds of the causal router rule so decoding depth matches the capacities."""
    from depthmux.recipes.router_calibration import CalibrateRouterSpec, run_calibrate_router

    quiet_transformers()
    spec = CalibrateRouterSpec(
        model=model, out=str(out), corpus=corpus, block_size=block_size, cal_blocks=cal_blocks,
        eval_blocks=eval_blocks, batch_size=batch_size, on=on, prompt_tokens=prompt_tokens, rounds=rounds,
    ).validate()  # fmt: skip
    res = run_calibrate_router(
        spec, log=(lambda m: typer.echo(m, err=True)) if as_json else typer.echo, progress=progress
    )
    typer.echo(json.dumps(res, indent=2) if as_json else f"calibrated model in {out}")


@app.command()
def truncate(
    out: Path = typer.Option(..., "--out", help="New folder for the truncated model (+ truncation.json)."),
    source: str = typer.Option("smollm2", "--from", help="smollm2 or a LLaMA model folder."),
    layers: int | None = typer.Option(None, "--layers", help="Layers to keep (K)."),
    keep: str = typer.Option("ends", "--keep", help="ends (first K-1 and the last) | first (first K)."),
    match_flops: str | None = typer.Option(
        None, "--match-flops", help="Instead of --layers: the model whose forward FLOPs per token to match."
    ),
    corpus: str = typer.Option("shakespeare", help="Held-out text the FLOPs are measured on."),
) -> None:
    """The honest baseline: the source with layers dropped, to K layers or to another model's FLOPs."""
    from depthmux.recipes.truncate import run_lm_truncate

    quiet_transformers()
    rec = run_lm_truncate(out, source, layers=layers, keep=keep, match_flops=match_flops, corpus=corpus)
    target = f", target {rec['target_flops_per_token'] / 1e6:.1f}" if "target_flops_per_token" in rec else ""
    typer.echo(
        f"{rec['layers']} of {rec['source_layers']} layers kept ({rec['kept_layers']}); forward MFLOPs per token "
        f"{rec['flops_per_token'] / 1e6:.1f} (source {rec['source_flops_per_token'] / 1e6:.1f}{target}); model in {out}"
    )


def _range(text: str | None, name: str) -> tuple[int, int] | None:
    if text is None:
        return None
    lo, sep, hi = text.partition("-")
    if not sep or not lo.strip().isdigit() or not hi.strip().isdigit():
        raise DepthmuxError(f"{name} must look like 16-256, got {text!r}")
    if int(hi) < int(lo):
        raise DepthmuxError(f"{name} {text!r}: the upper bound {hi.strip()} is below the lower bound {lo.strip()}")
    return int(lo), int(hi)


# options the two engine benchmarks share (bench-decode, bench-kv): one declaration each
BenchModel = Annotated[str, typer.Option("--model", help="The vanilla model (smollm2 | a folder).")]
BenchMorModel = Annotated[str, typer.Option("--mor-model", help="The MoR model (from `lm build-mor`).")]
BenchRequests = Annotated[int | None, typer.Option("--num-requests", help="Requests (default 128).")]
BenchPromptLen = Annotated[str | None, typer.Option("--prompt-len", help="Prompt lengths, uniform (default 16-256).")]
BenchOutputLen = Annotated[str | None, typer.Option("--output-len", help="Output lengths, uniform (default 8-128).")]
BenchSeed = Annotated[int, typer.Option(help="Workload seed.")]
BenchJson = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
BenchOut = Annotated[Path | None, typer.Option("--out", help="Also write the JSON result to this file.")]
BenchDevice = Annotated[
    str, typer.Option("--device", help="cpu | cuda | cuda:N (where the models and the engine run).")
]


def _workload(spec, quick: bool, num_requests, prompt_len, output_len, **more):
    """A bench spec (DecodeBenchSpec or with its fields) with ``--quick`` and the given workload options
    applied (None: keep the spec's)."""
    from dataclasses import replace

    from depthmux.recipes.decode_bench import quick_spec

    if quick:
        spec = quick_spec(spec)
    given = dict(
        num_requests=num_requests,
        prompt_len=_range(prompt_len, "--prompt-len"),
        output_len=_range(output_len, "--output-len"),
        **more,
    )
    return replace(spec, **{k: v for k, v in given.items() if v is not None})


def _emit_json(res: dict, out: Path | None, as_json: bool) -> bool:
    """Write ``res`` to ``out`` (checked free before the run) and print it with ``--json``; True if printed."""
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=2))
    if as_json:
        typer.echo(json.dumps(res, indent=2))
    return as_json


@app.command("bench-decode")
def bench_decode(
    model: BenchModel = "smollm2",
    mor_model: BenchMorModel = "runs/smollm2-mor",
    quick: bool = typer.Option(False, "--quick", help="A small version of the workload (16 requests, B = 16)."),
    num_requests: BenchRequests = None,
    prompt_len: BenchPromptLen = None,
    output_len: BenchOutputLen = None,
    batch: int | None = typer.Option(None, "--batch", help="B: static batch size / engine sequences (default 32)."),
    repeats: int | None = typer.Option(None, "--repeats", help="Interleaved repetitions (default 2)."),
    kv_budget_mib: float = typer.Option(256.0, "--kv-budget-mib", help="KV budget for the admission numbers."),
    seed: BenchSeed = 0,
    breakdown: bool = typer.Option(False, "--breakdown", help="Add a time breakdown of the engine runs."),
    also: list[str] = typer.Option(
        [], "--also", help="Another model timed in the same process (repeatable): a truncated SmolLM2, another MoR..."
    ),
    as_json: BenchJson = False,
    out: BenchOut = None,
    device: BenchDevice = "cpu",
    progress: opt.ProgressOpt = True,
) -> None:
    """Tokens/s and latency of HF static batching, the engine (lockstep) and the engine (depth-wise) for
    the vanilla and the MoR model (and --also models); compute ceiling, KV bytes per token, sequences
    admitted per budget."""
    from depthmux.recipes.decode_bench import DecodeBenchSpec, run_decode_bench
    from depthmux.utils.checks import check_output_file

    quiet_transformers()
    spec = DecodeBenchSpec(
        model=model, mor_model=mor_model, kv_budget_mib=kv_budget_mib, seed=seed, breakdown=breakdown, device=device,
        also=tuple(also),
    )  # fmt: skip
    spec = _workload(spec, quick, num_requests, prompt_len, output_len, batch=batch, repeats=repeats).validate()
    if out is not None:  # every option is checked before the benchmark runs
        check_output_file("--out", out)
    res = run_decode_bench(spec, log=(lambda m: typer.echo(m, err=True)) if as_json else typer.echo, progress=progress)
    if _emit_json(res, out, as_json):
        return
    typer.echo(
        f"compute ceiling {res['compute_ceiling']:.3f} (average depth {res['average_depth']:.3f} of "
        f"{res['num_recursions']}); MoR depth-wise reaches {res['fraction_of_ceiling']:.1%} of it; engine "
        f"{res['speedup_vs_hf_static']:.2f}x HF static (vanilla)"
    )
    for name, path in res.get("also", {}).items():
        ratios = ", ".join(f"{c} {r:.2f}" for c, r in res["over_vanilla"][name].items())
        typer.echo(f"{name} ({path}) / vanilla: {ratios}")
    for name, kv in res["kv"].items():
        if isinstance(kv, dict):
            typer.echo(
                f"KV {name}: {kv['kv_bytes_per_token']:.0f} B/token ({kv['over_vanilla']:.3f} of vanilla; block "
                f"{kv['block_ratio_measured']:.3f}, SPEC 4 {kv['block_ratio_expected_spec4']:.3f}), "
                f"{kv['admitted_sequences']} sequences admitted in {res['kv']['budget_bytes'] / 2**20:.0f} MiB"
            )


def _budgets(text: str) -> tuple[float, ...]:
    out = []
    for part in text.split(","):
        try:
            out.append(float(part))
        except ValueError:
            raise DepthmuxError(f"--kv-budgets-mib must be numbers separated by commas, got {text!r}") from None
    return tuple(out)


@app.command("bench-kv")
def bench_kv(
    model: BenchModel = "smollm2",
    mor_model: BenchMorModel = "runs/smollm2-mor",
    budgets: str = typer.Option("64,128,256", "--kv-budgets-mib", help="KV budgets to run under, MiB."),
    quick: bool = typer.Option(False, "--quick", help="The small bench-decode workload (16 requests, B = 16)."),
    num_requests: BenchRequests = None,
    prompt_len: BenchPromptLen = None,
    output_len: BenchOutputLen = None,
    batch: int | None = typer.Option(None, "--batch", help="B: items per block call (default 32)."),
    seed: BenchSeed = 0,
    as_json: BenchJson = False,
    out: BenchOut = None,
    device: BenchDevice = "cpu",
    progress: opt.ProgressOpt = True,
) -> None:
    """Does the KV budget hold? The bench-decode workload under each budget for vanilla, recursion-wise
    and shared KV: tensor bytes allocated, pages held, sequences really running, preemptions."""
    from depthmux.recipes.decode_bench import DecodeBenchSpec
    from depthmux.recipes.kv_budget import KVBudgetSpec, run_kv_budget_table
    from depthmux.utils.checks import check_output_file

    quiet_transformers()
    bench = DecodeBenchSpec(model=model, mor_model=mor_model, seed=seed, device=device)
    bench = _workload(bench, quick, num_requests, prompt_len, output_len, batch=batch)
    spec = KVBudgetSpec(bench, _budgets(budgets)).validate()
    if out is not None:
        check_output_file("--out", out)
    res = run_kv_budget_table(
        spec, log=(lambda m: typer.echo(m, err=True)) if as_json else typer.echo, progress=progress
    )
    if _emit_json(res, out, as_json):
        return
    typer.echo(f"every allocation within its budget: {res['all_within_budget']}")
