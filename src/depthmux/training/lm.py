"""The causal-LM training loop for vanilla, recursive and MoR decoders (SPEC 3, SPEC 4).

``train_lm(model, train_blocks, eval_blocks, LMTrainConfig(out_dir=...))`` runs AdamW with a
warmup-stable-decay schedule (:mod:`depthmux.training.schedules`) and gradient clipping on an
:class:`accelerate.Accelerator`: one process, or several under ``accelerate launch`` / ``torchrun``
(DDP; gloo on CPU, see "Several processes" below). The model is any
:class:`depthmux.lm.protocol.CausalLM` (a transformers LLaMA is wrapped in
:class:`depthmux.lm.HFCausalLMAdapter`); it declares its own FLOPs, read here with a
:class:`depthmux.utils.flops.FlopCounter` (training FLOPs = 3 x forward).

Length: one loop, read top to bottom: config validation, resume, the step, the non-finite guards and
the checkpoint writer belong together (splitting them would scatter the resume invariants).

Run folder (:class:`depthmux.utils.run_folder.RunFolder`, the layout ``mux train`` uses too)::

    .lock                          held while the run writes (a second run fails with one line)
    train_config.json              {"train": LMTrainConfig, "params", "processes", **extra_state}
    log.jsonl                      one JSON record per logged step / eval
    checkpoints/step-000050/       model/ (save_pretrained [+ tokenizer]) and trainer/ (optimizer
                                   tensors, RNG state, state.json: step, scheduler, FLOPs, loss)
    model/                         the final model (save_pretrained [+ tokenizer])

Resume (``config.resume=True``) takes the newest checkpoint that loads (a corrupt newer one is
skipped), restores weights, optimizer, scheduler, step, FLOPs and RNG state, and cuts the log
back to that step; the batch order is a pure function of (seed, step), so a resumed run
reproduces the uninterrupted one exactly, log included (tested on CPU). Without a checkpoint
yet (killed early), a resume restarts from step 0 with the stored settings.

Several processes (DDP): step s uses the same global batch ``batch_indices(s, B_global)`` whatever
the process count; process r takes its slice ``[r * B_p, (r + 1) * B_p)``, DDP averages the
gradients, so the trajectory equals one process with the global batch up to float reduction order
(the logged ``loss`` is the mean over processes). Only the main process holds the lock and writes
the folder (config, log, checkpoints, model). ``B_global = batch_size x processes`` of the run's
first launch (stored as ``processes`` in ``train_config.json``); a resume with another process count
keeps ``B_global`` and splits it anew (``B_p = B_global / processes``), and is refused with one line
when it does not divide. Every process draws the same RNG stream (the checkpoint stores the main
process's): exact for models without dropout, as ours are. Without a GPU, a launch with
``WORLD_SIZE > 1`` runs on CPU with gloo (``accelerate launch --multi_gpu --num_processes 2`` or
``torchrun --nproc_per_node 2``; ``accelerate launch --cpu`` starts only one process without MPI).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from depthmux.data.text import IGNORE_INDEX, PackedBlocks
from depthmux.errors import DepthmuxError, require
from depthmux.lm import CausalLM, as_causal_lm, evaluate_lm, load_lm, pretrained_model_dir
from depthmux.recursion.stats import RouterStatsAccumulator
from depthmux.training.distill import kd_loss
from depthmux.training.schedules import WSD
from depthmux.utils.checkpoint import (
    atomic_directory,
    load_checkpoint,
    load_optimizer_tensors,
    optimizer_tensors,
    save_checkpoint,
)
from depthmux.utils.checks import check_float, check_int, check_seed
from depthmux.utils.flops import FlopCounter
from depthmux.utils.run_folder import RunFolder
from depthmux.utils.seed import capture_rng_state, restore_rng_state, seed_everything

RESUME_KEYS = (
    "steps",
    "batch_size",
    "lr",
    "weight_decay",
    "betas",
    "eps",
    "warmup_steps",
    "decay_fraction",
    "min_lr_ratio",
    "decay",
    "grad_clip",
    "seed",
)
"""Settings a resumed run must share with the stored one (they shape the trajectory)."""
KD_KEYS = ("teacher", "kd_weight", "kd_temperature")
"""Distillation settings, checked on resume too (a run stored before they existed had none)."""


@dataclass
class LMTrainConfig:
    """Hyper-parameters and I/O of :func:`train_lm`; :meth:`validate` checks every field.

    ``batch_size`` is per process (global batch = batch_size x processes of the first launch). ``warmup_steps``,
    ``decay_fraction``, ``min_lr_ratio`` and ``decay`` define the WSD schedule. ``checkpoint_every``:
    None = every ~10% of the steps, at most every 50 steps; 0 = only at the end. ``eval_every`` = 0
    evaluates only at the end (when eval blocks are given). ``log_every`` = 0 logs no step records.
    ``max_flops`` stops early once the measured training FLOPs reach it (compute matching).
    ``teacher`` (``"smollm2"`` or a model folder) with ``kd_weight > 0`` adds knowledge distillation
    (:mod:`depthmux.training.distill`: ``loss += kd_weight * KD`` at temperature ``kd_temperature``);
    the teacher's forward FLOPs are logged apart (``teacher_flops``), not in ``train_flops``.
    """

    out_dir: str
    steps: int = 100
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    warmup_steps: int = 10
    decay_fraction: float = 0.2
    min_lr_ratio: float = 0.1
    decay: str = "linear"
    grad_clip: float = 1.0
    checkpoint_every: int | None = None
    keep_checkpoints: int = 2
    eval_every: int = 0
    eval_batch_size: int = 8
    eval_max_batches: int | None = None
    log_every: int = 1
    resume: bool = False
    seed: int = 0
    progress: bool = True
    mixed_precision: str = "no"
    max_flops: float | None = None
    teacher: str | None = None
    kd_weight: float = 0.0
    kd_temperature: float = 1.0

    def validate(self) -> LMTrainConfig:
        """Raise a one-line :class:`DepthmuxError` for the first invalid field; return self."""
        require(bool(str(self.out_dir)), "--out must be a folder path")
        check_int("--steps", self.steps, 1)
        check_int("--batch-size", self.batch_size, 1)
        check_float("--lr", self.lr, 0.0, low_open=True)
        check_float("--weight-decay", self.weight_decay, 0.0)
        require(len(self.betas) == 2, f"betas must be two numbers, got {self.betas!r}")
        for beta in self.betas:
            check_float("beta", beta, 0.0, 1.0, high_open=True)
        check_float("eps", self.eps, 0.0, low_open=True)
        check_int("--warmup", self.warmup_steps, 0)
        check_float("--decay-fraction", self.decay_fraction, 0.0, 1.0)
        check_float("min lr ratio", self.min_lr_ratio, 0.0, 1.0)
        require(self.decay in ("linear", "cosine"), f"unknown decay {self.decay!r}: use 'linear' or 'cosine'")
        check_float("--grad-clip", self.grad_clip, 0.0)
        check_int("--checkpoint-every", self.checkpoint_every, 0, allow_none=True)
        check_int("keep_checkpoints", self.keep_checkpoints, 1)
        check_int("--eval-every", self.eval_every, 0)
        check_int("eval batch size", self.eval_batch_size, 1)
        check_int("eval max batches", self.eval_max_batches, 1, allow_none=True)
        check_int("log_every", self.log_every, 0)
        check_seed("--seed", self.seed)
        require(
            self.mixed_precision in ("no", "fp16", "bf16"),
            f"unknown mixed precision {self.mixed_precision!r}: use no, fp16 or bf16",
        )
        check_float("max_flops", self.max_flops, 0.0, low_open=True, allow_none=True)
        check_float("--kd-weight", self.kd_weight, 0.0)
        check_float("--kd-temperature", self.kd_temperature, 0.0, low_open=True)
        require(
            (self.teacher is not None) == (self.kd_weight > 0),
            "distillation needs both --teacher and --kd-weight > 0 (or neither)",
        )
        return self

    @property
    def checkpoint_interval(self) -> int:
        """Steps between checkpoints (0 = only at the end); see the class docstring for the default."""
        if self.checkpoint_every is not None:
            return self.checkpoint_every
        return max(1, min(50, math.ceil(self.steps / 10)))


@dataclass
class LMTrainResult:
    """What :func:`train_lm` returns (also the last lines of ``log.jsonl``)."""

    step: int
    train_loss: float
    train_flops: float
    approx_flops_6nd: float
    tokens: int
    seconds: float
    eval: dict[str, Any] = field(default_factory=dict)
    out_dir: str = ""


def batch_indices(step: int, batch_size: int, num_blocks: int, seed: int) -> torch.Tensor:
    """Global block indices of ``step``: an endless sequence of seeded permutations (one per
    epoch), a pure function of (seed, step), which is what makes resume exact."""
    start = step * batch_size
    out = []
    while len(out) < batch_size:
        epoch, pos = divmod(start + len(out), num_blocks)
        perm = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        out.extend(perm[pos : pos + batch_size - len(out)].tolist())
    return torch.tensor(out, dtype=torch.long)


def _decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay, seen = [], [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 and "embed" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _scalar(x) -> float:
    return float(x.detach().float().mean()) if isinstance(x, torch.Tensor) else float(x)


def _target_share(labels: torch.Tensor, accelerator) -> float:
    """``world x n_r / N``: this process's share of the global batch's predicted targets (labels
    ``[b, T]``, shifted). Scaling the process's token-mean loss by it before DDP averages the
    gradients gives the gradient of the global batch's token-mean loss, as one process computes it."""
    if accelerator.num_processes == 1:
        return 1.0
    n = (labels[:, 1:] != IGNORE_INDEX).sum().to(torch.float64)
    total = float(accelerator.reduce(n.clone(), reduction="sum"))
    return accelerator.num_processes * float(n) / total if total > 0 else 1.0


def _global_values(means: dict[str, Any], sums: dict[str, float], share: float, accelerator) -> dict[str, float]:
    """One record's values over the global batch, in one all-reduce: ``means`` (token-mean losses)
    weighted by each process's target share, ``sums`` (FLOPs, tokens) added."""
    values = [_scalar(v) * share / accelerator.num_processes for v in means.values()] + list(sums.values())
    if accelerator.num_processes > 1:
        t = accelerator.reduce(torch.tensor(values, dtype=torch.float64, device=accelerator.device), reduction="sum")
        values = t.tolist()
    return dict(zip([*means, *sums], values, strict=True))


def _check_finite(model: nn.Module, what: str) -> None:
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise DepthmuxError(f"non-finite weights ({bad[0]}) {what}: nothing saved; lower --lr or check the data")


def _save_model(model: nn.Module, directory: Path, accelerator, tokenizer=None) -> None:
    unwrapped = accelerator.unwrap_model(model)
    unwrapped.save_pretrained(str(directory), state_dict=accelerator.get_state_dict(model), safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))


def _distributed_cpu() -> bool:
    """Whether this is one of several launched processes (``WORLD_SIZE > 1``) on a machine without a GPU:
    accelerate then needs ``cpu=True`` to set up DDP over gloo (else each process trains alone)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


def global_batch_split(batch_size: int, stored_processes: int, processes: int) -> tuple[int, int]:
    """``(global batch, per-process batch)`` of a run launched first with ``stored_processes`` processes
    of ``batch_size`` blocks, now running on ``processes``; one line when they cannot split it."""
    global_batch = batch_size * stored_processes
    if global_batch % processes:
        raise DepthmuxError(
            f"--resume: the run's global batch is {global_batch} blocks ({batch_size} x {stored_processes} "
            f"processes), which {processes} processes cannot split evenly; launch a process count that divides it"
        )
    return global_batch, global_batch // processes


def load_teacher(spec: str, device) -> CausalLM:
    """The distillation teacher (``"smollm2"`` or a model folder), frozen, in eval mode."""
    teacher = as_causal_lm(load_lm(pretrained_model_dir(spec))).to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def read_lm_checkpoint(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict]:
    """``(model state dict, trainer tensors, trainer state)`` of ``checkpoints/step-N``; raises on any
    corruption (used with :meth:`RunFolder.latest_checkpoint`, which then takes an older one)."""
    tensors, state = load_checkpoint(folder / "trainer")
    for key in ("step", "total_steps", "optimizer", "rng", "scheduler"):
        if key not in state:
            raise DepthmuxError(f"corrupt checkpoint {folder}: trainer state has no {key!r}")
    weights = load_lm(folder / "model").state_dict()
    return weights, tensors, state


def train_lm(
    model: nn.Module,
    train_blocks: PackedBlocks,
    eval_blocks: PackedBlocks | None,
    config: LMTrainConfig,
    tokenizer=None,
    accelerator=None,
    extra_state: dict | None = None,
) -> LMTrainResult:
    """Train ``model`` on packed blocks ``[N, T]`` (SPEC 4 recipe: AdamW + WSD + clipping).

    Args:
        model: a :class:`~depthmux.lm.protocol.CausalLM` or a transformers LLaMA-family model
            (trained in place through :class:`~depthmux.lm.HFCausalLMAdapter`).
        train_blocks: packed training blocks.
        eval_blocks: packed held-out blocks or ``None``; evaluated every ``eval_every`` steps
            and at the end.
        config: :class:`LMTrainConfig` (validated here).
        tokenizer: saved next to every model copy, so ``depthmux lm eval`` can re-tokenize.
        accelerator: an ``accelerate.Accelerator``; one is created when ``None``.
        extra_state: JSON metadata stored in ``train_config.json`` (e.g. corpus, model spec).

    Returns:
        :class:`LMTrainResult`; the final model is in ``<out_dir>/model``.
    """
    from accelerate import Accelerator

    cfg = config.validate()
    if len(train_blocks) == 0:
        raise DepthmuxError("no training blocks")
    accelerator = accelerator or Accelerator(mixed_precision=cfg.mixed_precision, cpu=_distributed_cpu())
    run = RunFolder(cfg.out_dir)
    lock = run.lock() if accelerator.is_main_process else contextlib.nullcontext()
    with lock:
        return _train(as_causal_lm(model), train_blocks, eval_blocks, cfg, run, tokenizer, accelerator, extra_state)


def _train(
    lm: CausalLM,
    train_blocks: PackedBlocks,
    eval_blocks: PackedBlocks | None,
    cfg: LMTrainConfig,
    run: RunFolder,
    tokenizer,
    accelerator,
    extra_state: dict | None,
) -> LMTrainResult:
    from tqdm.auto import tqdm

    main = accelerator.is_main_process
    if main:
        run.clean_stale_tmp()
    accelerator.wait_for_everyone()  # the others read checkpoints only once interrupted saves are cleaned
    if not cfg.resume and run.holds_run():
        raise DepthmuxError(f"{run.root} already holds a run: continue it with --resume or choose a new --out")
    seed_everything(cfg.seed)

    resumed = None
    if cfg.resume:
        resumed = run.latest_checkpoint(read_lm_checkpoint)
        if resumed is None and not run.has_json("train_config"):
            raise DepthmuxError(f"--resume: no checkpoint under {run.checkpoint_root} and no train_config.json")
        stored = run.read_json("train_config").get("train", {}) if run.has_json("train_config") else {}
        kd_keys = [k for k in KD_KEYS if k in stored or getattr(cfg, k) != getattr(LMTrainConfig, k)]
        run.check_matches(
            "train_config", {"train": asdict(cfg)}, keys=[f"train.{k}" for k in RESUME_KEYS + tuple(kd_keys)]
        )
    world, stored_world = accelerator.num_processes, accelerator.num_processes
    if cfg.resume and run.has_json("train_config"):
        stored_world = int(run.read_json("train_config").get("processes", world))
    global_batch, per_process = global_batch_split(cfg.batch_size, stored_world, world)
    if resumed is not None:
        lm.load_state_dict(resumed[2][0])
    teacher = load_teacher(cfg.teacher, accelerator.device) if cfg.teacher else None
    if teacher is not None:
        sizes = [m.get_input_embeddings().num_embeddings for m in (teacher, lm)]
        require(
            sizes[0] == sizes[1],
            f"--teacher {cfg.teacher} has {sizes[0]} tokens, the model {sizes[1]}: distillation needs one vocabulary",
        )

    optimizer = torch.optim.AdamW(_decay_groups(lm, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
    model, optimizer = accelerator.prepare(lm, optimizer)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer,
        WSD(cfg.steps, cfg.warmup_steps, cfg.decay_fraction, cfg.min_lr_ratio, cfg.decay),
    )

    start_step, flops_done, approx_done, tokens_done, loss_value = 0, 0.0, 0.0, 0, float("nan")
    teacher_flops = 0.0
    if resumed is not None:
        _, tensors, state = resumed[2]
        load_optimizer_tensors(optimizer, tensors.get("optimizer", {}), state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        restore_rng_state(tensors["rng"], state["rng"])
        start_step = int(state["step"])
        flops_done, approx_done = float(state["train_flops"]), float(state["approx_flops_6nd"])
        tokens_done, loss_value = int(state["tokens"]), float(state.get("train_loss", float("nan")))
        teacher_flops = float(state.get("teacher_flops", 0.0))

    if main:
        if not cfg.resume:
            run.write_json(
                "train_config",
                {
                    "train": asdict(cfg),
                    "params": lm.parameter_counts(),
                    "processes": accelerator.num_processes,
                    **(extra_state or {}),
                },
            )
        # the history up to the resumed step, exactly as an uninterrupted run wrote it
        run.truncate_log(lambda r: r.get("step", 0) <= start_step and not r.get("final"))

    def log(record: dict) -> None:
        if main:
            run.append_log(record)

    def checkpoint(step: int) -> None:
        _check_finite(lm, f"at step {step}")

        def write(tmp: Path) -> None:
            _save_model(model, tmp / "model", accelerator, tokenizer)
            opt_tensors, opt_meta = optimizer_tensors(optimizer)
            rng_tensors, rng_meta = capture_rng_state()
            state = {
                "step": step,
                "total_steps": cfg.steps,
                "train_flops": flops_done,
                "approx_flops_6nd": approx_done,
                "tokens": tokens_done,
                "train_loss": loss_value,
                "teacher_flops": teacher_flops,
                "optimizer": opt_meta,
                "rng": rng_meta,
                "scheduler": scheduler.state_dict(),
            }
            save_checkpoint(tmp / "trainer", {"optimizer": opt_tensors, "rng": rng_tensors}, state)

        if main:
            run.save_checkpoint(step, write, cfg.keep_checkpoints)
        else:
            accelerator.get_state_dict(model)  # a collective for sharded (FSDP) state dicts; nothing written
        accelerator.wait_for_everyone()

    rank = accelerator.process_index
    every = cfg.checkpoint_interval
    model.train()
    t0 = time.time()
    bar = tqdm(
        total=cfg.steps,
        initial=start_step,
        disable=not (cfg.progress and accelerator.is_local_main_process),
        desc="train",
        dynamic_ncols=True,
    )
    eval_result: dict = {}
    step = start_step
    while step < cfg.steps and not (cfg.max_flops is not None and flops_done >= cfg.max_flops):
        idx = batch_indices(step, global_batch, len(train_blocks), cfg.seed)[
            rank * per_process : (rank + 1) * per_process
        ]
        batch = {k: v.to(accelerator.device) for k, v in train_blocks.batch(idx).items()}
        share = _target_share(batch["labels"], accelerator)
        lr = scheduler.get_last_lr()[0]
        with FlopCounter() as counter:
            out = model(
                input_ids=batch["input_ids"],
                position_ids=batch["position_ids"],
                labels=batch["labels"],
                use_cache=False,
            )
        loss = out.loss
        kd = None
        if teacher is not None:
            with torch.no_grad(), FlopCounter() as teacher_counter:
                t_logits = teacher(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
            teacher_flops += teacher_counter.flops * world
            kd = kd_loss(out.logits, t_logits, batch["labels"], cfg.kd_temperature)
            loss = loss + cfg.kd_weight * kd
        if not torch.isfinite(loss):
            raise DepthmuxError(
                f"loss is {loss.item()} at step {step + 1}: stopped, nothing saved for this step; "
                "lower --lr or check the data"
            )
        accelerator.backward(loss * share if share != 1.0 else loss)
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip) if cfg.grad_clip > 0 else None
        if grad_norm is not None and not torch.isfinite(grad_norm):
            raise DepthmuxError(f"gradient norm is {grad_norm.item()} at step {step + 1}: stopped; lower --lr")
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1

        aux = {f"aux.{k}": v for k, v in (out.aux_losses or {}).items()}
        sums = {"flops": counter.flops, "macs": counter.non_embedding_macs, "tokens": batch["input_ids"].numel()}
        g = _global_values({"loss": loss, "lm_loss": out.lm_loss, **aux}, sums, share, accelerator)
        flops_done += 3.0 * g["flops"]
        approx_done += 6.0 * g["macs"]
        tokens_done += int(g["tokens"])
        loss_value = g["loss"]
        record = {
            "step": step,
            "loss": loss_value,
            "lm_loss": g["lm_loss"],
            "lr": lr,
            "train_flops": flops_done,
            "approx_flops_6nd": approx_done,
            "tokens": tokens_done,
            "time": time.time() - t0,
        }
        if grad_norm is not None:
            record["grad_norm"] = _scalar(grad_norm)
        if kd is not None:
            record["kd_loss"] = _scalar(kd)
            record["teacher_flops"] = teacher_flops
        if out.aux_losses:
            record["aux"] = {k: g[f"aux.{k}"] for k in out.aux_losses}
        if out.router_stats:
            acc = RouterStatsAccumulator()
            acc.add(out.router_stats, float(batch["input_ids"].numel()))
            record["router_stats"] = acc.across_processes(accelerator).result()
        if cfg.log_every and (step % cfg.log_every == 0 or step == cfg.steps):
            log(record)
        bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.2e}", refresh=False)
        bar.update(1)

        done = step == cfg.steps or (cfg.max_flops is not None and flops_done >= cfg.max_flops)
        if eval_blocks is not None and cfg.eval_every and step % cfg.eval_every == 0 and not done:
            log(
                {
                    "step": step,
                    "eval": evaluate_lm(lm, eval_blocks, cfg.eval_batch_size, cfg.eval_max_batches, accelerator),
                }
            )
        if done or (every and step % every == 0):
            checkpoint(step)
    bar.close()

    if eval_blocks is not None:
        eval_result = evaluate_lm(lm, eval_blocks, cfg.eval_batch_size, cfg.eval_max_batches, accelerator)
        log({"step": step, "eval": eval_result, "final": True})
    _check_finite(lm, "at the end")
    if main:
        with atomic_directory(run.root / "model") as tmp:
            _save_model(model, tmp, accelerator, tokenizer)
    accelerator.wait_for_everyone()
    return LMTrainResult(
        step=step,
        train_loss=loss_value,
        train_flops=flops_done,
        approx_flops_6nd=approx_done,
        tokens=tokens_done,
        seconds=time.time() - t0,
        eval=eval_result,
        out_dir=str(run.root),
    )


def list_checkpoints(out_dir: str | Path) -> list[tuple[int, Path]]:
    """Checkpoints of an LM run folder, ``[(step, folder)]`` sorted by step."""
    return RunFolder(out_dir).checkpoints()
