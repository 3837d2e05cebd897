"""Training RevMUX adapters on cached frozen features (SPEC 1.3).

The run folder (:class:`depthmux.utils.run_folder.RunFolder`, the layout ``lm train`` uses too)::

    .lock                       held while the run writes (a second run fails with one line)
    train_config.json           {"train": MuxTrainConfig, "model": the model's config}
    log.jsonl                   one record per finished epoch (losses, train and validation accuracy)
    checkpoints/step-NNNNNN/    trainer/: adapters, optimizer, best-so-far adapters, RNG, and the
                                position (epoch, step, history) with the epoch's running sums;
                                written every ``save_every`` steps and at each epoch end
    best/                       the adapters that scored best on the validation split (never the
                                reported split, SPEC 1.4)

A step whose loss is not finite, or finite but over :data:`EXPLODED_FACTOR` times the run's first step
loss, stops the run with one line before the optimizer takes it; ``best/`` is then not written.

Data order depends only on (seed, epoch) and the epoch's running sums are checkpointed, so a run
resumed at any step ends exactly where an uninterrupted run would, its log included.
"""

from __future__ import annotations

import contextlib
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from depthmux.errors import DepthmuxError
from depthmux.multiplexing.evaluation import predict_cached
from depthmux.multiplexing.features import FeatureCache
from depthmux.multiplexing.losses import revmux_loss
from depthmux.multiplexing.model import MultiplexedClassifier
from depthmux.utils.checkpoint import load_checkpoint, load_optimizer_tensors, optimizer_tensors, save_checkpoint
from depthmux.utils.checks import check_float, check_int, check_seed
from depthmux.utils.run_folder import RunFolder
from depthmux.utils.seed import capture_rng_state, restore_rng_state

#: The most epochs ``min_steps`` may ask for (the paper's 50 for BERT/T5, SPEC 1.3).
MAX_EPOCHS = 50
#: ``--tau`` range: cosine / τ stays within ±1000 (τ below it gives logits and a loss of 1e28 that no
#: optimizer step undoes); above 10 the InfoNCE term is flat (nothing to learn from it).
TAU_RANGE = (1e-3, 10.0)
#: ``--lambda-info`` range: the paper's λ is 0.25 (SPEC 1.3); past 100 the task loss is a rounding
#: error next to the InfoNCE term (λ = 1e30 trained a below-chance model).
LAMBDA_RANGE = (0.0, 100.0)
#: ``--lr`` upper bound: an AdamW step moves each adapter weight by about lr, so above 1 every step
#: overshoots weights of size ~0.1 (lr 1e30 gave a nan loss on the second step).
MAX_LR = 1.0
#: A step whose loss is above this many times the run's first step loss stops the run, as a
#: non-finite loss does (finite but exploding: a too high --lr); nothing is saved as best.
EXPLODED_FACTOR = 100.0


@dataclass
class MuxTrainConfig:
    epochs: int = 3
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    lambda_info: float = 0.25  # SPEC 1.3: 0.25 for BERT
    tau: float = 0.05
    seed: int = 0
    save_every: int = 200  # steps between resumable checkpoints
    patience: int = 0  # epochs without a better validation accuracy before stopping, after min_steps (0: never)
    min_steps: int = 0  # small data: raise the epochs until this many optimizer steps (at most MAX_EPOCHS)

    def validate(self) -> MuxTrainConfig:
        """One line for the first invalid field (CLI option names); returns self."""
        check_int("--epochs", self.epochs, 1)
        check_int("--batch-size", self.batch_size, 1)
        check_float("--lr", self.lr, 0.0, MAX_LR, low_open=True)
        check_float("weight decay", self.weight_decay, 0.0)
        check_float("--lambda-info", self.lambda_info, *LAMBDA_RANGE)
        check_float("--tau", self.tau, *TAU_RANGE)
        check_seed("--seed", self.seed)
        check_int("save_every", self.save_every, 0)
        check_int("--patience", self.patience, 0)
        check_int("--min-steps", self.min_steps, 0)
        return self

    def stops_early(self, epoch: int, best_epoch: int, global_step: int) -> bool:
        """Early stopping before ``epoch`` (0-based): ``patience`` epochs without a better validation
        accuracy, but never before ``min_steps`` optimizer steps. Small-data runs often sit on a
        chance-level plateau for a while before they learn (seen at N = 4 on 500 SST-2 examples:
        stopped after 112 of 600 steps at chance), so the patience counts only after the minimum budget."""
        if not self.patience or global_step < self.min_steps:
            return False
        return epoch - max(best_epoch, 0) >= self.patience

    def planned_epochs(self, num_examples: int) -> int:
        """Epochs over ``num_examples``: ``epochs``, raised for small data until ``min_steps`` optimizer
        steps (never above :data:`MAX_EPOCHS`, SPEC 1.3's 50); early stopping may end sooner."""
        steps_per_epoch = max(1, -(-num_examples // self.batch_size))
        return max(self.epochs, min(MAX_EPOCHS, -(-self.min_steps // steps_per_epoch)))


def epoch_batches(num_examples: int, batch_size: int, seed: int, epoch: int) -> list[torch.Tensor]:
    """Random batches, a function of (seed, epoch) only, so a resumed run is exact.

    Batches are not length-bucketed on purpose: bucketing makes every training group hold
    inputs of similar length, while evaluation groups are random, and it cost ~8 points of
    validation accuracy at N = 2 on SST-2 in a 4k-example trial.
    """
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return list(torch.randperm(num_examples, generator=g).split(batch_size))


def _validation_accuracy(model: MultiplexedClassifier, cache: FeatureCache, seed: int) -> float:
    order = torch.randperm(len(cache), generator=torch.Generator().manual_seed(seed))
    pred = predict_cached(model, cache, order)
    return (pred == cache.labels).float().mean().item()


def read_mux_checkpoint(folder: Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    """``(tensors, state)`` of a mux checkpoint folder; raises on any corruption (used with
    :meth:`RunFolder.latest_checkpoint`, which then takes an older one)."""
    tensors, state = load_checkpoint(folder / "trainer")
    for key in ("position", "sums", "optimizer", "rng"):
        if key not in state:
            raise DepthmuxError(f"corrupt checkpoint {folder}: trainer state has no {key!r}")
    for key in ("adapters", "best", "rng"):
        if key not in tensors:
            raise DepthmuxError(f"corrupt checkpoint {folder}: no {key}.safetensors")
    return tensors, state


def _check_finite(named: dict[str, torch.Tensor], what: str) -> None:
    bad = [k for k, v in named.items() if not torch.isfinite(v).all()]
    if bad:
        raise DepthmuxError(f"non-finite adapter weights ({bad[0]}) {what}: nothing saved; lower --lr")


def _check_loss(loss: float, first: float | None, epoch: int, step: int) -> None:
    """Stop a run whose loss is not finite, or finite but above :data:`EXPLODED_FACTOR` times its first
    step loss (``first``; None on the first step): one line, nothing saved as best."""
    where = f"at epoch {epoch + 1} step {step + 1}"
    if not math.isfinite(loss):
        raise DepthmuxError(f"loss is {loss} {where}: stopped, nothing saved as best; lower --lr or raise --tau")
    if first is not None and first > 0 and loss > EXPLODED_FACTOR * first:
        raise DepthmuxError(
            f"loss exploded to {loss:.4g} {where}, over {EXPLODED_FACTOR:g}x its first value {first:.4g}: "
            "stopped, nothing saved as best; lower --lr"
        )


def train_mux(
    model: MultiplexedClassifier,
    train: FeatureCache,
    validation: FeatureCache,
    cfg: MuxTrainConfig,
    out_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    stop_after_steps: int | None = None,
) -> dict:
    """Train ``model``'s adapters; leaves the best-on-validation adapters loaded.

    Args:
        model: a :class:`MultiplexedClassifier` with N >= 2 (its backbone and head stay frozen).
        train, validation: :class:`FeatureCache` built at ``model.config.prefill_layers``.
        cfg: :class:`MuxTrainConfig` (validated here).
        out_dir: the run folder (see the module docstring; None: keep nothing on disk). A folder that
            already holds a run needs ``resume``.
        resume: continue from the newest intact checkpoint in ``out_dir`` (from the start when the run
            was stopped before its first checkpoint).
        stop_after_steps: stop early after this many steps in total (used to test resuming).
    Returns:
        the history: per-epoch mean losses and validation accuracy, and the best epoch.
    """
    if model.config.n < 2:
        raise DepthmuxError("nothing to train at N = 1: the teacher path has no adapters")
    cfg.validate()
    run = RunFolder(out_dir) if out_dir is not None else None
    if run is None and resume:
        raise DepthmuxError("--resume needs the run folder (out_dir)")
    with run.lock() if run is not None else contextlib.nullcontext():
        return _train(model, train, validation, cfg, run, resume, progress, stop_after_steps)


def _train(
    model: MultiplexedClassifier,
    train: FeatureCache,
    validation: FeatureCache,
    cfg: MuxTrainConfig,
    run: RunFolder | None,
    resume: bool,
    progress: bool,
    stop_after_steps: int | None,
) -> dict:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    state = {
        "epoch": 0,
        "step_in_epoch": 0,
        "global_step": 0,
        "best_val": -1.0,
        "best_epoch": -1,
        "history": [],
        "first_loss": None,  # the run's first step loss: the reference of the exploding-loss stop
    }
    sums = {"loss": 0.0, "ce": 0.0, "info": 0.0, "acc": 0.0, "count": 0}
    best_sd = {k: v.detach().clone() for k, v in model.trainable_state_dict().items()}
    if run is not None:
        run.clean_stale_tmp()
        if not resume and run.holds_run():
            raise DepthmuxError(f"{run.root} already holds a run: continue it with --resume or choose a new --out")
        latest = run.latest_checkpoint(read_mux_checkpoint) if resume else None
        if resume and latest is None and not run.has_json("train_config"):
            raise DepthmuxError(f"--resume: no checkpoint to resume from in {run.checkpoint_root}")
        if latest is not None:
            tensors, saved = latest[2]
            model.load_state_dict(tensors["adapters"], strict=False)
            load_optimizer_tensors(opt, tensors.get("optimizer", {}), saved["optimizer"])
            restore_rng_state(tensors["rng"], saved["rng"])
            best_sd, state, sums = tensors["best"], saved["position"], saved["sums"]
            state.setdefault("first_loss", None)  # a checkpoint of an older version
        if not resume:
            run.write_json("train_config", {"train": asdict(cfg), "model": asdict(model.config)})
        run.truncate_log(lambda r: r.get("epoch", 0) <= state["epoch"])  # the history up to the checkpoint

    def checkpoint() -> None:
        if run is None:
            return
        adapters = model.trainable_state_dict()
        _check_finite(adapters, f"at step {state['global_step']}")

        def write(tmp: Path) -> None:
            opt_tensors, opt_meta = optimizer_tensors(opt)
            rng_tensors, rng_meta = capture_rng_state()
            save_checkpoint(
                tmp / "trainer",
                {"adapters": adapters, "optimizer": opt_tensors, "best": best_sd, "rng": rng_tensors},
                {
                    "position": state,
                    "sums": sums,
                    "optimizer": opt_meta,
                    "rng": rng_meta,
                    "config": asdict(model.config),
                },
            )

        run.save_checkpoint(state["global_step"], write)

    epochs = cfg.planned_epochs(len(train))
    if progress and epochs > cfg.epochs and state["global_step"] == 0:
        tqdm.write(
            f"  N={model.config.n} l={model.config.prefill_layers} {model.config.mixer}: {epochs} epochs, raised "
            f"from --epochs {cfg.epochs} by --min-steps {cfg.min_steps} on {len(train)} examples "
            "(give --epochs alone to train exactly that many)",
            file=sys.stderr,
        )
    for epoch in range(state["epoch"], epochs):
        if cfg.stops_early(epoch, state["best_epoch"], state["global_step"]):
            break
        batches = epoch_batches(len(train), cfg.batch_size, cfg.seed, epoch)
        model.train()
        bar = tqdm(
            range(state["step_in_epoch"], len(batches)),
            disable=not progress,
            leave=False,
            desc=f"N={model.config.n} epoch {epoch + 1}/{epochs}",
        )
        for step in bar:
            idx = batches[step]
            hidden, mask = train.batch(model.config.prefill_layers, idx)
            logits, recovered = model.forward_from_prefill(hidden, mask)
            labels = train.labels[idx].to(logits.device)
            loss, parts = revmux_loss(logits, labels, recovered, train.teacher[idx], cfg.lambda_info, cfg.tau)
            _check_loss(loss.item(), state["first_loss"], epoch, step)
            if state["first_loss"] is None:
                state["first_loss"] = loss.item()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            acc = (logits.argmax(-1) == labels).float().mean().item()
            for k, v in (("loss", loss.item()), ("ce", parts["ce"]), ("info", parts["info"]), ("acc", acc)):
                sums[k] += v
            sums["count"] += 1
            state["step_in_epoch"] = step + 1
            state["global_step"] += 1
            c = sums["count"]
            bar.set_postfix(loss=f"{sums['loss'] / c:.3f}", acc=f"{sums['acc'] / c:.3f}")
            if cfg.save_every and state["global_step"] % cfg.save_every == 0:
                checkpoint()
            if stop_after_steps is not None and state["global_step"] >= stop_after_steps:
                checkpoint()
                return {"history": state["history"], "stopped_at": state["global_step"]}
        val = _validation_accuracy(model, validation, cfg.seed)
        c = max(1, sums["count"])
        record = {
            "epoch": epoch + 1,
            "loss": sums["loss"] / c,
            "ce": sums["ce"] / c,
            "info": sums["info"] / c,
            "train_acc": sums["acc"] / c,
            "val_acc": val,
        }
        state["history"].append(record)
        sums = dict.fromkeys(sums, 0.0) | {"count": 0}
        if val > state["best_val"]:
            state["best_val"], state["best_epoch"] = val, epoch + 1
            best_sd = {k: v.detach().clone() for k, v in model.trainable_state_dict().items()}
        state["epoch"], state["step_in_epoch"] = epoch + 1, 0
        if progress:
            tqdm.write(
                f"  N={model.config.n} l={model.config.prefill_layers} {model.config.mixer} epoch {epoch + 1}: "
                f"loss {record['loss']:.3f} train acc {record['train_acc']:.3f} val acc {val:.3f}",
                file=sys.stderr,
            )
        if run is not None:
            run.append_log(record)  # before the checkpoint: a resume from it never lacks this record
        checkpoint()
    _check_finite(best_sd, "of the best epoch")
    model.load_state_dict(best_sd, strict=False)
    model.eval()
    if run is not None:
        model.save_pretrained(
            run.root / "best",
            {"history": state["history"], "best_epoch": state["best_epoch"], "train_config": asdict(cfg)},
        )
    return {"history": state["history"], "best_epoch": state["best_epoch"], "best_val": state["best_val"]}
