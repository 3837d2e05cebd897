"""Causal-LM training and evaluation for vanilla, recursive and MoR decoders (SPEC 3, SPEC 4).

``train_lm(model, train_blocks, eval_blocks, LMTrainConfig(out_dir=...))`` runs AdamW with a
warmup-stable-decay schedule (:mod:`depthmux.training.schedules`), gradient clipping and atomic
checkpoints on an :class:`accelerate.Accelerator` (one CPU process here; the same code runs
under ``accelerate launch`` with DDP). ``evaluate_lm(model, blocks)`` gives held-out NLL,
perplexity and aggregated MoR router statistics.

Model contract (HF causal LMs and :mod:`depthmux.recursion` models)::

    out = model(input_ids=[B, T], position_ids=[B, T], labels=[B, T], use_cache=False)
    out.loss                      # scalar: LM loss + weighted auxiliary losses (optimised)
    out.lm_loss                   # optional, scalar LM loss (else out.loss)
    out.aux_losses                # optional dict[str, scalar], unweighted (logged only)
    out.logits                    # [B, T, V]
    out.router_stats              # optional dict (MoR): tokens per recursion, agreement, ...

Blocks are packed documents (:mod:`depthmux.data.text`): ``attention_mask`` is left ``None`` so
the model derives document boundaries from ``position_ids`` (transformers does this only
without a KV cache, hence ``use_cache=False``).

Run folder (``config.out_dir``)::

    train_config.json              LMTrainConfig
    log.jsonl                      one JSON object per logged step / eval
    checkpoints/step-000010/       model/ (save_pretrained [+ tokenizer]) and trainer/
                                   (optimizer tensors, RNG state, state.json: step, scheduler,
                                   FLOPs, python/numpy RNG), written to a temp folder and renamed
    model/                         the final model (save_pretrained [+ tokenizer])

Resume (``config.resume=True``) reloads the newest complete checkpoint: weights, optimizer,
scheduler, step, FLOPs and RNG state; the batch order is a pure function of (seed, step), so a
resumed run reproduces the uninterrupted one exactly (tested on CPU).

FLOPs: forward FLOPs are measured each step with hooks, counting ``2 * rows * in * out`` for
every ``nn.Linear`` call (so recursion applied B times counts B times, and MoR tokens that skip
a recursion are not counted if the model gathers the selected tokens) plus ``4 * T_q * ctx * d_attn``
per attention call (causal: ctx = (T + 1) / 2). Training FLOPs = 3 x forward (backward ~ 2 x
forward). ``6 * N * tokens`` (N = non-embedding parameters applied per token) is logged too.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import os
import random
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from depthmux.data.text import IGNORE_INDEX, PackedBlocks
from depthmux.errors import DepthmuxError
from depthmux.training.schedules import WSD
from depthmux.utils.checkpoint import (
    atomic_directory,
    atomic_write_text,
    load_checkpoint,
    load_optimizer_tensors,
    optimizer_tensors,
    save_checkpoint,
)

CKPT_RE = re.compile(r"^step-(\d+)$")


@dataclass
class LMTrainConfig:
    """Hyper-parameters and I/O of :func:`train_lm`.

    ``batch_size`` is per process (global batch = batch_size x processes). ``warmup_steps``,
    ``decay_fraction``, ``min_lr_ratio`` and ``decay`` define the WSD schedule. ``checkpoint_every``
    = 0 saves only at the end. ``eval_every`` = 0 evaluates only at the end (when eval blocks are
    given). ``max_flops`` stops early once the measured training FLOPs reach it (compute matching).
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
    checkpoint_every: int = 0
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


# --------------------------------------------------------------------------------------------
# Parameters and FLOPs
# --------------------------------------------------------------------------------------------


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Unique parameters: ``total``, ``embedding`` (input embeddings + untied LM head) and
    ``non_embedding`` (= total - embedding). Shared (recursive) weights count once."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    emb = 0
    emb_ids: set[int] = set()
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        mod = getattr(model, getter, lambda: None)()
        if mod is not None and id(mod.weight) not in emb_ids:
            emb_ids.add(id(mod.weight))
            emb += mod.weight.numel()
    return {"total": total, "embedding": emb, "non_embedding": total - emb}


class FlopMeter:
    """Forward-FLOP counter from module hooks (see the module docstring for what it counts).

    Use as a context manager around forwards; read :attr:`flops`, :attr:`linear_macs_per_token`.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.flops = 0.0
        self.non_embedding_macs = 0.0  # multiply-adds of linears other than the LM head
        self.tokens = 0
        self._handles: list = []
        self._head = getattr(model, "get_output_embeddings", lambda: None)()

    def _linear_hook(self, mod: nn.Module, args, kwargs, out) -> None:
        x = args[0] if args else kwargs.get("input", kwargs.get("x"))
        if not isinstance(x, torch.Tensor):
            return
        rows = x.numel() // max(x.shape[-1], 1)
        macs = rows * mod.in_features * mod.out_features
        # per-loop LoRA of depthmux.recursion.RelaxedLinear: forward(x, loop), active for loop >= 0
        rank = getattr(mod, "rank", 0) if getattr(mod, "lora_A", None) is not None else 0
        loop = args[1] if len(args) > 1 else kwargs.get("loop", -1)
        if rank and isinstance(loop, int) and loop >= 0:
            macs += rows * rank * (mod.in_features + mod.out_features)
        self.flops += 2.0 * macs
        if mod is not self._head:
            self.non_embedding_macs += macs

    def _attn_hook(self, mod: nn.Module, args, kwargs, out) -> None:
        x = args[0] if args else kwargs.get("hidden_states")
        if not isinstance(x, torch.Tensor) or x.dim() != 3:
            return
        b, t, d = x.shape
        q = getattr(mod, "q_proj", None)
        d_attn = q.out_features if isinstance(getattr(q, "out_features", None), int) else d
        self.flops += 4.0 * b * t * ((t + 1) / 2) * d_attn

    @staticmethod
    def _is_linear(m: nn.Module) -> bool:
        return isinstance(m, nn.Linear) or (
            isinstance(getattr(m, "in_features", None), int) and isinstance(getattr(m, "out_features", None), int)
            and isinstance(getattr(m, "weight", None), nn.Parameter))

    def __enter__(self) -> FlopMeter:
        for m in self.model.modules():
            if self._is_linear(m):
                self._handles.append(m.register_forward_hook(self._linear_hook, with_kwargs=True))
            elif type(m).__name__.endswith("Attention") and any(self._is_linear(c) for c in m.children()):
                self._handles.append(m.register_forward_hook(self._attn_hook, with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


@torch.no_grad()
def measure_forward_flops(model: nn.Module, blocks: PackedBlocks, batch_size: int = 4) -> dict[str, float]:
    """Forward FLOPs per token on the first ``batch_size`` blocks (model in train mode, so MoR
    routing uses its training rule). Returns ``flops_per_token`` (forward),
    ``train_flops_per_token`` (3 x forward) and ``approx_6n_per_token`` (6 x non-embedding
    parameters applied per token, recursion counted as often as applied)."""
    batch = blocks.batch(slice(0, batch_size))
    was_training = model.training
    model.train()
    state = torch.get_rng_state()
    with FlopMeter(model) as meter:
        _forward(model, batch)
    torch.set_rng_state(state)
    model.train(was_training)
    tokens = batch["input_ids"].numel()
    return {"flops_per_token": meter.flops / tokens, "train_flops_per_token": 3 * meter.flops / tokens,
            "approx_6n_per_token": 6 * meter.non_embedding_macs / tokens}


# --------------------------------------------------------------------------------------------
# Forward helpers
# --------------------------------------------------------------------------------------------


def _accepts(model: nn.Module, name: str) -> bool:
    fwd = getattr(model, "forward", None)
    try:
        params = inspect.signature(fwd).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _forward(model: nn.Module, batch: dict[str, torch.Tensor], labels: bool = True, routing: str | None = None):
    base = getattr(model, "module", model)
    kwargs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"]}
    if labels:
        kwargs["labels"] = batch["labels"]
    if _accepts(base, "use_cache"):
        kwargs["use_cache"] = False
    if routing is not None and _routes(base):
        kwargs["routing"] = routing
    return model(**kwargs)


def _routes(model: nn.Module) -> bool:
    """Whether ``model`` is a MoR model whose forward takes ``routing`` ("topk" | "causal")."""
    cfg = getattr(model, "config", None)
    try:
        return getattr(cfg, "mor_router", None) is not None and "routing" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _scalar(x) -> float:
    return float(x.detach().float().mean()) if isinstance(x, torch.Tensor) else float(x)


def _out_get(out, name: str):
    try:
        value = getattr(out, name)
    except AttributeError:
        value = None
    if value is None and isinstance(out, dict):
        value = out.get(name)
    return value


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token NLL and the number of targets: logits ``[B, T, V]``, labels ``[B, T]``
    (shifted here: logit t predicts label t+1; ``-100`` ignored)."""
    lg = logits[:, :-1].float().reshape(-1, logits.shape[-1])
    tg = labels[:, 1:].reshape(-1)
    nll = F.cross_entropy(lg, tg, ignore_index=IGNORE_INDEX, reduction="sum")
    return nll, (tg != IGNORE_INDEX).sum()


# --------------------------------------------------------------------------------------------
# Router statistics (MoR, SPEC 4)
# --------------------------------------------------------------------------------------------


class RouterStatsAccumulator:
    """Aggregate ``out.router_stats`` (SPEC 4) over batches.

    Entries named ``tokens_per_*`` (counts summed over a batch, one per recursion / depth) are
    summed; every other numeric entry (e.g. ``causal_agreement`` [N_r], a fraction) is averaged
    weighted by the batch's token count; entries with a batch dimension (``[B, N_r]``, e.g.
    ``capacity_k``) are first averaged over it. :meth:`result` adds shares and
    ``dead_token_ratio`` (see :func:`summarize_router_stats`).
    """

    def __init__(self) -> None:
        self.sums: dict[str, np.ndarray] = {}
        self.weights: dict[str, float] = {}
        self.tokens = 0.0

    def add(self, stats: dict | None, tokens: float) -> None:
        if not stats:
            return
        self.tokens += tokens
        for k, v in stats.items():
            try:
                arr = np.asarray(v.detach().float().cpu() if isinstance(v, torch.Tensor) else v, dtype=np.float64)
            except (TypeError, ValueError):
                continue
            if arr.ndim > 1:
                arr = arr.mean(axis=0)
            if k in self.sums and self.sums[k].shape != arr.shape:
                continue
            w = 1.0 if k.startswith("tokens_per") else tokens
            self.sums[k] = self.sums.get(k, 0.0) + w * arr
            self.weights[k] = self.weights.get(k, 0.0) + w

    def result(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, total in self.sums.items():
            if k.startswith("tokens_per"):
                out[k] = total.tolist()
                if self.tokens > 0:
                    out[k.replace("tokens_per", "share_per", 1)] = (total / self.tokens).tolist()
            elif self.weights[k] > 0:
                out[k] = (total / self.weights[k]).tolist()
        return summarize_router_stats(out)


def summarize_router_stats(stats: dict[str, Any]) -> dict[str, Any]:
    """Add derived MoR metrics to aggregated router stats.

    ``dead_token_ratio``: share of tokens never selected beyond recursion 1, i.e.
    ``1 - n_2 / n_1`` with ``n_r`` the tokens that run recursion r (``tokens_per_recursion``;
    needs N_r >= 2). With expert-choice top-k routing it equals ``1 - capacity_2`` by
    construction; it is informative for the causal (decoding) rule and for token-choice.
    """
    out = dict(stats)
    v = stats.get("tokens_per_recursion")
    if isinstance(v, list) and len(v) >= 2 and v[0] > 0:
        out["dead_token_ratio"] = 1.0 - float(v[1]) / float(v[0])
    return out


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_lm(model: nn.Module, blocks: PackedBlocks, batch_size: int = 8,
                max_batches: int | None = None, accelerator=None, routing: str | None = None) -> dict[str, Any]:
    """Held-out next-token NLL (nats per target token), perplexity and MoR router stats.

    Args:
        model: a causal LM following the module's contract.
        blocks: packed held-out blocks ``[N, T]``.
        batch_size: blocks per forward.
        max_batches: evaluate only the first ``max_batches`` batches.
        accelerator: when given (several processes), each process takes a strided share of
            the batches and sums are reduced across processes.
        routing: MoR expert-choice only: ``"topk"`` (the training rule; ``causal_agreement``
            then measures how often ``sigmoid(logit) > 0.5`` matches top-k) or ``"causal"``
            (the decoding rule). ``None``: the model's eval default (causal for MoR).

    Returns:
        ``{"nll", "ppl", "targets", "model_loss", "router_stats"}``; ``nll`` is computed here
        from the logits (the same definition for every model); ``model_loss`` is the mean of
        the model's own ``lm_loss`` (or ``loss``) for comparison; ``router_stats`` is empty for
        models without routing.
    """
    if len(blocks) == 0:
        raise DepthmuxError("no evaluation blocks")
    was_training = model.training
    model.eval()
    rng = torch.get_rng_state()
    device = next(model.parameters()).device
    n_batches = math.ceil(len(blocks) / batch_size)
    if max_batches is not None:
        n_batches = min(n_batches, max_batches)
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    nll_sum = torch.zeros((), dtype=torch.float64, device=device)
    n_tgt = torch.zeros((), dtype=torch.float64, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    router = RouterStatsAccumulator()
    for i in range(rank, n_batches, world):
        batch = {k: v.to(device) for k, v in blocks.batch(slice(i * batch_size, (i + 1) * batch_size)).items()}
        out = _forward(model, batch, routing=routing)
        nll, cnt = token_nll(out.logits, batch["labels"])
        nll_sum += nll.double()
        n_tgt += cnt.double()
        own = _out_get(out, "lm_loss")
        own = own if own is not None else out.loss
        if own is not None:
            loss_sum += float(own) * float(cnt)
        router.add(_out_get(out, "router_stats"), float(batch["input_ids"].numel()))
    if accelerator is not None and world > 1:
        nll_sum, n_tgt, loss_sum = (accelerator.reduce(t, reduction="sum") for t in (nll_sum, n_tgt, loss_sum))
    torch.set_rng_state(rng)
    model.train(was_training)
    if float(n_tgt) == 0:
        raise DepthmuxError("evaluation blocks contain no targets")
    nll_mean = float(nll_sum / n_tgt)
    return {"nll": nll_mean, "ppl": math.exp(min(nll_mean, 50.0)), "targets": int(n_tgt),
            "model_loss": float(loss_sum / n_tgt), "router_stats": router.result(),
            **({"routing": routing} if routing else {})}


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


def list_checkpoints(out_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, ``[(step, folder)]`` sorted by step."""
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for d in root.iterdir():
        m = CKPT_RE.match(d.name)
        if m and (d / "trainer" / "state.json").is_file() and (d / "model").is_dir():
            found.append((int(m.group(1)), d))
    return sorted(found)


def _jsonable(obj):
    try:
        json.dumps(obj)
        return obj
    except TypeError:
        if isinstance(obj, dict):
            return {k: _jsonable(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [_jsonable(v) for v in obj]
        if isinstance(obj, torch.Tensor):
            return obj.tolist()
        return repr(obj)


def _rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda{i}"] = s
    py = random.getstate()
    np_state = np.random.get_state()
    meta = {"python": [py[0], list(py[1]), py[2]],
            "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])]}
    return tensors, meta


def _set_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(tensors) if k.startswith("cuda")]
        if states:
            torch.cuda.set_rng_state_all(states)
    py = meta["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = meta["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))


def _save_model(model: nn.Module, directory: Path, accelerator, tokenizer=None) -> None:
    unwrapped = accelerator.unwrap_model(model)
    unwrapped.save_pretrained(str(directory), state_dict=accelerator.get_state_dict(model),
                              safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))


def save_training_checkpoint(out_dir: str | os.PathLike, step: int, model: nn.Module, optimizer,
                             scheduler, accelerator, state: dict, tokenizer=None,
                             keep: int = 2) -> Path:
    """Write ``checkpoints/step-<step>/{model,trainer}`` atomically (temp folder + rename) and
    prune older checkpoints beyond ``keep``. Main process only writes."""
    root = Path(out_dir) / "checkpoints"
    final = root / f"step-{step:06d}"
    state_all = dict(state)
    if accelerator.is_main_process:
        with atomic_directory(final) as tmp:
            _save_model(model, tmp / "model", accelerator, tokenizer)
            opt_tensors, opt_meta = optimizer_tensors(optimizer)
            rng_tensors, rng_meta = _rng_state()
            state_all.update({"step": step, "optimizer": opt_meta, "rng": rng_meta,
                              "scheduler": _jsonable(scheduler.state_dict())})
            save_checkpoint(tmp / "trainer", {"optimizer": opt_tensors, "rng": rng_tensors}, state_all)
        ckpts = list_checkpoints(out_dir)
        for _, d in ckpts[:-keep] if keep > 0 else []:
            shutil.rmtree(d, ignore_errors=True)
    else:
        _save_model(model, Path(tempfile.mkdtemp()), accelerator)  # collective for FSDP state dicts
    accelerator.wait_for_everyone()
    return final


def _load_weights_into(model: nn.Module, model_dir: Path) -> None:
    from safetensors.torch import load_file

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise DepthmuxError(f"corrupt checkpoint {model_dir}: no safetensors weights")
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        sd.update(load_file(str(f)))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if unexpected:
        raise DepthmuxError(f"checkpoint {model_dir} does not match the model: unexpected {unexpected[:3]}")
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded_ptrs = {params[k].data_ptr() for k in sd if k in params}
    really_missing = [k for k in missing if k not in params or params[k].data_ptr() not in loaded_ptrs]
    if really_missing:
        raise DepthmuxError(f"checkpoint {model_dir} does not match the model: missing {really_missing[:3]}")


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def batch_indices(step: int, batch_size: int, num_blocks: int, seed: int) -> torch.Tensor:
    """Global block indices of ``step``: an endless sequence of seeded permutations (one per
    epoch), a pure function of (seed, step), which is what makes resume exact."""
    start = step * batch_size
    out = []
    while len(out) < batch_size:
        epoch, pos = divmod(start + len(out), num_blocks)
        perm = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        out.extend(perm[pos:pos + batch_size - len(out)].tolist())
    return torch.tensor(out, dtype=torch.long)


def _decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay, seen = [], [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 and "embed" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train_lm(model: nn.Module, train_blocks: PackedBlocks, eval_blocks: PackedBlocks | None,
             config: LMTrainConfig, tokenizer=None, accelerator=None,
             extra_state: dict | None = None) -> LMTrainResult:
    """Train ``model`` on packed blocks ``[N, T]`` (SPEC 4 recipe: AdamW + WSD + clipping).

    Args:
        model: causal LM (HF or :mod:`depthmux.recursion`), randomly initialised or pretrained.
        train_blocks: packed training blocks.
        eval_blocks: packed held-out blocks or ``None``; evaluated every ``eval_every`` steps
            and at the end.
        config: :class:`LMTrainConfig`.
        tokenizer: saved next to every model copy, so ``depthmux lm eval`` can re-tokenize.
        accelerator: an ``accelerate.Accelerator``; one is created when ``None``.
        extra_state: JSON metadata stored in ``train_config.json`` (e.g. corpus, model spec).

    Returns:
        :class:`LMTrainResult`; the final model is in ``<out_dir>/model``.
    """
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    cfg = config
    if cfg.steps < 1:
        raise DepthmuxError(f"steps must be positive, got {cfg.steps}")
    if cfg.batch_size < 1:
        raise DepthmuxError(f"batch size must be positive, got {cfg.batch_size}")
    if len(train_blocks) == 0:
        raise DepthmuxError("no training blocks")
    out_dir = Path(cfg.out_dir)
    accelerator = accelerator or Accelerator(mixed_precision=cfg.mixed_precision)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)

    start_step, flops_done, approx_done, tokens_done = 0, 0.0, 0.0, 0
    resume_from = None
    if cfg.resume:
        ckpts = list_checkpoints(out_dir)
        if not ckpts:
            raise DepthmuxError(f"--resume: no checkpoint under {out_dir / 'checkpoints'}")
        resume_from = ckpts[-1][1]
        _load_weights_into(accelerator.unwrap_model(model), resume_from / "model")

    optimizer = torch.optim.AdamW(_decay_groups(model, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas),
                                  eps=cfg.eps)
    model, optimizer = accelerator.prepare(model, optimizer)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer,
        WSD(cfg.steps, cfg.warmup_steps, cfg.decay_fraction, cfg.min_lr_ratio, cfg.decay))

    if resume_from is not None:
        tensors, state = load_checkpoint(resume_from / "trainer")
        if state.get("total_steps") != cfg.steps:
            raise DepthmuxError(f"--resume: checkpoint was for {state.get('total_steps')} steps, "
                                f"this run asks for {cfg.steps} (the schedule would differ)")
        load_optimizer_tensors(optimizer, tensors.get("optimizer", {}), state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(tensors["rng"], state["rng"])
        start_step = int(state["step"])
        flops_done = float(state.get("train_flops", 0.0))
        approx_done = float(state.get("approx_flops_6nd", 0.0))
        tokens_done = int(state.get("tokens", 0))

    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        meta = {"train": _jsonable(asdict(cfg)), "params": count_parameters(accelerator.unwrap_model(model)),
                "processes": accelerator.num_processes, **(extra_state or {})}
        atomic_write_text(out_dir / "train_config.json", json.dumps(meta, indent=2))
        log_path = out_dir / "log.jsonl"
        if resume_from is not None and log_path.exists():  # drop lines written after the checkpoint
            keep = [ln for ln in log_path.read_text().splitlines()
                    if ln.strip() and json.loads(ln).get("step", 0) <= start_step]
            atomic_write_text(log_path, "".join(ln + "\n" for ln in keep))
        elif resume_from is None:
            atomic_write_text(log_path, "")

    def log(record: dict) -> None:
        if accelerator.is_main_process:
            with open(out_dir / "log.jsonl", "a") as f:
                f.write(json.dumps(_jsonable(record)) + "\n")

    world, rank = accelerator.num_processes, accelerator.process_index
    global_batch = cfg.batch_size * world
    unwrapped = accelerator.unwrap_model(model)
    model.train()
    t0 = time.time()
    bar = tqdm(total=cfg.steps, initial=start_step, disable=not (cfg.progress and accelerator.is_local_main_process),
               desc="train", dynamic_ncols=True)
    loss_value = float("nan")
    eval_result: dict = {}
    step = start_step
    for step in range(start_step, cfg.steps):
        idx = batch_indices(step, global_batch, len(train_blocks), cfg.seed)[rank * cfg.batch_size:(rank + 1) * cfg.batch_size]
        batch = {k: v.to(accelerator.device) for k, v in train_blocks.batch(idx).items()}
        lr = scheduler.get_last_lr()[0]
        with FlopMeter(unwrapped) as meter:
            out = _forward(model, batch)
        loss = out.loss
        if loss is None or not torch.isfinite(loss):
            raise DepthmuxError(f"loss is {loss} at step {step + 1}: lower --lr or check the data")
        accelerator.backward(loss)
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip) if cfg.grad_clip > 0 else None
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        step_tokens = batch["input_ids"].numel() * world
        flops_done += 3.0 * meter.flops * world
        approx_done += 6.0 * meter.non_embedding_macs * world
        tokens_done += step_tokens
        loss_value = _scalar(loss)
        lm_loss = _out_get(out, "lm_loss")
        record = {"step": step + 1, "loss": loss_value, "lm_loss": _scalar(lm_loss if lm_loss is not None else loss),
                  "lr": lr, "train_flops": flops_done, "approx_flops_6nd": approx_done, "tokens": tokens_done,
                  "time": time.time() - t0}
        if grad_norm is not None:
            record["grad_norm"] = _scalar(grad_norm)
        aux = _out_get(out, "aux_losses") or {}
        if aux:
            record["aux"] = {k: _scalar(v) for k, v in aux.items()}
        stats = _out_get(out, "router_stats")
        if stats:
            acc = RouterStatsAccumulator()
            acc.add(stats, float(batch["input_ids"].numel()))
            record["router_stats"] = acc.result()
        if cfg.log_every and ((step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps):
            log(record)
        bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.2e}", refresh=False)
        bar.update(1)

        done = step + 1 == cfg.steps or (cfg.max_flops is not None and flops_done >= cfg.max_flops)
        if eval_blocks is not None and cfg.eval_every and (step + 1) % cfg.eval_every == 0 and not done:
            ev = evaluate_lm(model, eval_blocks, cfg.eval_batch_size, cfg.eval_max_batches, accelerator)
            log({"step": step + 1, "eval": ev})
        if done or (cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0):
            save_training_checkpoint(out_dir, step + 1, model, optimizer, scheduler, accelerator,
                                     {"total_steps": cfg.steps, "train_flops": flops_done,
                                      "approx_flops_6nd": approx_done, "tokens": tokens_done},
                                     tokenizer, cfg.keep_checkpoints)
        if done:
            step += 1
            break
    else:
        step = cfg.steps
    bar.close()

    if eval_blocks is not None:
        eval_result = evaluate_lm(model, eval_blocks, cfg.eval_batch_size, cfg.eval_max_batches, accelerator)
        log({"step": step, "eval": eval_result, "final": True})
    if accelerator.is_main_process:
        with atomic_directory(out_dir / "model") as tmp:
            _save_model(model, tmp, accelerator, tokenizer)
    accelerator.wait_for_everyone()
    return LMTrainResult(step=step, train_loss=loss_value, train_flops=flops_done, approx_flops_6nd=approx_done,
                         tokens=tokens_done, seconds=time.time() - t0, eval=eval_result, out_dir=str(out_dir))


# --------------------------------------------------------------------------------------------
# Loading saved models
# --------------------------------------------------------------------------------------------


def resolve_model_dir(path: str | os.PathLike) -> Path:
    """A model folder from a run folder (``<run>/model`` or its newest checkpoint's model) or a
    model folder itself (holding ``config.json``)."""
    p = Path(path)
    if not p.exists():
        raise DepthmuxError(f"model not found: {p}")
    if (p / "config.json").is_file():
        return p
    if (p / "model" / "config.json").is_file():
        return p / "model"
    ckpts = list_checkpoints(p)
    if ckpts:
        return ckpts[-1][1] / "model"
    raise DepthmuxError(f"no model in {p}: expected config.json, model/ or checkpoints/")


def load_lm(path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Load a causal LM saved by :func:`train_lm` or ``save_pretrained``: a recursive model via
    :func:`depthmux.recursion.load_recursive_model`, anything else via
    ``AutoModelForCausalLM``."""
    d = resolve_model_dir(path)
    try:
        cfg = json.loads((d / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DepthmuxError(f"cannot read {d / 'config.json'}: {e}") from None
    if "recursive" in str(cfg.get("model_type", "")):
        try:
            import depthmux.recursion as rec  # registers the model type with the Auto classes
        except ImportError as e:
            raise DepthmuxError(f"{d} holds a recursive model but depthmux.recursion is unavailable ({e})") from None
        if hasattr(rec, "load_recursive_model"):
            return rec.load_recursive_model(d)
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(str(d), dtype=dtype)
    except (OSError, ValueError) as e:
        raise DepthmuxError(f"cannot load a causal LM from {d}: {str(e).splitlines()[0]}") from None


# --------------------------------------------------------------------------------------------
# Model and data specs (what the CLI and the experiment scripts build from)
# --------------------------------------------------------------------------------------------


@dataclass
class LMModelSpec:
    """How to obtain the model to train (SPEC 3, SPEC 4).

    From scratch (``from_pretrained is None``): a :class:`depthmux.recursion.RecursiveConfig`
    decoder with ``layers`` effective layers of width ``hidden`` (``sharing="none"``: vanilla;
    every variant uses the same implementation, so comparisons differ only in sharing/routing).
    ``intermediate`` defaults to the SwiGLU width ``8/3 * hidden`` rounded up to a multiple of 32.

    From a pretrained model: ``from_pretrained`` is ``"smollm2"`` (the packaged SmolLM2-135M) or
    a folder. With ``convert=True`` a LLaMA model is converted into a recursive one with
    ``recursions``, ``sharing``, ``init`` ("stepwise" | "average" | "lower") and ``lora_rank``
    (SVD-initialised per-loop LoRA, SPEC 3); otherwise it is loaded as is.
    """

    sharing: str = "none"
    recursions: int = 1
    router: str | None = None
    kv: str = "recursion_wise"
    hidden: int = 256
    layers: int = 8
    heads: int = 4
    kv_heads: int | None = None
    intermediate: int | None = None
    lora_rank: int = 0
    from_pretrained: str | None = None
    convert: bool = False
    init: str = "stepwise"
    seed: int = 0


def _pretrained_path(name: str) -> Path:
    if name == "smollm2":
        from depthmux.assets import smollm2_path

        return smollm2_path()
    p = Path(name)
    if not p.exists():
        raise DepthmuxError(f"pretrained model not found: {p}")
    return resolve_model_dir(p)


def build_lm_model(spec: LMModelSpec, vocab_size: int | None = None, eos_token_id: int | None = None) -> nn.Module:
    """Instantiate the model described by ``spec`` (float32, train mode)."""
    router = None if spec.router in (None, "", "none") else spec.router
    if spec.from_pretrained:
        path = _pretrained_path(spec.from_pretrained)
        if spec.convert:
            from depthmux.recursion import convert_llama_to_recursive

            extra = {"mor_router": router, "mor_kv": spec.kv} if router else {}
            model = convert_llama_to_recursive(path, num_recursions=spec.recursions, sharing=spec.sharing,
                                               init=spec.init, relaxation_rank=spec.lora_rank, **extra)
        else:
            model = load_lm(path)
        if vocab_size is not None and model.get_input_embeddings().num_embeddings < vocab_size:
            raise DepthmuxError(f"the tokenizer has {vocab_size} tokens but {spec.from_pretrained} only "
                                f"{model.get_input_embeddings().num_embeddings}: use its own tokenizer")
        return model.train()
    if vocab_size is None:
        raise DepthmuxError("a model from scratch needs the tokenizer's vocabulary size")
    from depthmux.recursion import RecursiveConfig, RecursiveForCausalLM

    if spec.hidden % spec.heads:
        raise DepthmuxError(f"--hidden {spec.hidden} is not a multiple of --heads {spec.heads}")
    inter = spec.intermediate or 32 * math.ceil(8 * spec.hidden / 3 / 32)
    cfg = RecursiveConfig(vocab_size=vocab_size, hidden_size=spec.hidden, intermediate_size=inter,
                          num_hidden_layers=spec.layers, num_attention_heads=spec.heads,
                          num_key_value_heads=spec.kv_heads or spec.heads, num_recursions=spec.recursions,
                          sharing=spec.sharing, relaxation_rank=spec.lora_rank, mor_router=router,
                          mor_kv=spec.kv, eos_token_id=eos_token_id, use_cache=False)
    torch.manual_seed(spec.seed)
    return RecursiveForCausalLM(cfg).train()


@dataclass
class LMDataSpec:
    """Corpus, tokenizer and packing (see :mod:`depthmux.data.text`).

    ``tokenizer``: ``"smollm2"`` (default; vocab 49152), ``"bpe:N"`` (a byte-level BPE with N
    tokens trained on the training split only) or a tokenizer folder. ``max_train_blocks`` /
    ``max_eval_blocks`` cap the packed blocks (quick runs).
    """

    corpus: str = "shakespeare"
    tokenizer: str = "smollm2"
    block_size: int = 256
    holdout: float = 0.1
    seed: int = 0
    max_train_blocks: int | None = None
    max_eval_blocks: int | None = None


def prepare_lm_data(spec: LMDataSpec, tokenizer=None):
    """Load, split (by document, seeded), tokenize and pack. Returns ``(tokenizer, train, eval)``
    (both :class:`PackedBlocks` ``[N, T]``). A given ``tokenizer`` replaces ``spec.tokenizer``."""
    from depthmux.data.text import load_corpus, load_tokenizer, pack_documents, split_documents, train_bpe_tokenizer

    docs = load_corpus(spec.corpus)
    train_docs, eval_docs = split_documents(docs, spec.holdout, spec.seed)
    if tokenizer is None:
        if str(spec.tokenizer).startswith("bpe:"):
            try:
                n = int(str(spec.tokenizer)[4:])
            except ValueError:
                raise DepthmuxError(f"bad tokenizer '{spec.tokenizer}': use bpe:<vocab size>") from None
            tokenizer = train_bpe_tokenizer(train_docs, n)
        else:
            tokenizer = load_tokenizer(spec.tokenizer)
    train = pack_documents(train_docs, tokenizer, spec.block_size, seed=spec.seed, max_blocks=spec.max_train_blocks)
    held = pack_documents(eval_docs, tokenizer, spec.block_size, seed=spec.seed,
                          max_blocks=spec.max_eval_blocks) if eval_docs else None
    return tokenizer, train, held


def _saved_tokenizer(model_dir: Path):
    if not any((model_dir / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        return None
    from transformers import AutoTokenizer

    importlib.import_module("depthmux.recursion")  # registers depthmux_recursive with the Auto classes first

    try:
        return AutoTokenizer.from_pretrained(str(model_dir))
    except (OSError, ValueError):
        return None


def run_lm_train(model_spec: LMModelSpec, data_spec: LMDataSpec, config: LMTrainConfig) -> LMTrainResult:
    """Build data and model, train, save: what ``depthmux lm train`` does.

    With ``config.resume`` the run folder's stored model and data settings are used (the
    tokenizer and model class come from the newest checkpoint; weights, optimizer and RNG are
    restored by :func:`train_lm`), so only ``out_dir`` and ``resume`` need to be given.
    """
    out = Path(config.out_dir)
    if config.resume:
        meta_path = out / "train_config.json"
        ckpts = list_checkpoints(out)
        if not ckpts or not meta_path.is_file():
            raise DepthmuxError(f"--resume: no checkpoint under {out / 'checkpoints'}")
        meta = json.loads(meta_path.read_text())
        data_spec = LMDataSpec(**meta["data"])
        model_spec = LMModelSpec(**meta["model_spec"])
        stored = meta["train"]
        stored.update(resume=True, progress=config.progress, out_dir=str(out))
        stored["betas"] = tuple(stored["betas"])
        config = LMTrainConfig(**stored)
        model_dir = ckpts[-1][1] / "model"
        tok = _saved_tokenizer(model_dir)
        tokenizer, train, held = prepare_lm_data(data_spec, tokenizer=tok)
        model = load_lm(model_dir).train()
    else:
        tokenizer, train, held = prepare_lm_data(data_spec)
        model = build_lm_model(model_spec, len(tokenizer), tokenizer.eos_token_id)
    extra = {"data": asdict(data_spec), "model_spec": asdict(model_spec),
             "data_stats": {"train_blocks": len(train), "eval_blocks": len(held) if held else 0,
                            "block_size": train.block_size, "vocab_size": len(tokenizer)}}
    return train_lm(model, train, held, config, tokenizer=tokenizer, extra_state=extra)


def _find_run_meta(path: Path) -> dict | None:
    for d in (path, path.parent, path.parent.parent.parent):
        f = d / "train_config.json"
        if f.is_file():
            try:
                return json.loads(f.read_text())
            except json.JSONDecodeError:
                return None
    return None


def run_lm_eval(model: str | os.PathLike, data_spec: LMDataSpec | None = None, batch_size: int = 8,
                max_batches: int | None = None, routing: str | None = None) -> dict[str, Any]:
    """Evaluate a saved model on held-out text: what ``depthmux lm eval`` does.

    ``model`` is a run folder, a checkpoint's ``model/`` or any model folder. Without
    ``data_spec`` the run's stored data settings are reused (the same held-out documents), or
    the default Shakespeare split. For MoR expert-choice models both routings are reported:
    the result's top level uses the decoding rule (``causal``) and ``"topk"`` holds the top-k
    result whose ``router_stats.causal_agreement`` is the causal-vs-top-k agreement.
    """
    path = Path(model)
    model_dir = resolve_model_dir(path)
    meta = _find_run_meta(path if path != model_dir else model_dir)
    if data_spec is None:
        data_spec = LMDataSpec(**meta["data"]) if meta and "data" in meta else LMDataSpec()
    tok = _saved_tokenizer(model_dir)
    tokenizer, _, held = prepare_lm_data(data_spec, tokenizer=tok)
    if held is None:
        raise DepthmuxError("no held-out documents: use a holdout fraction > 0 and at least two documents")
    lm = load_lm(model_dir)
    params = count_parameters(lm)
    is_expert = getattr(getattr(lm, "config", None), "mor_router", None) == "expert"
    result = evaluate_lm(lm, held, batch_size, max_batches, routing=routing or ("causal" if is_expert else None))
    if is_expert and routing is None:
        result["topk"] = evaluate_lm(lm, held, batch_size, max_batches, routing="topk")
    result.update(model=str(model_dir), params=params, corpus=data_spec.corpus, block_size=data_spec.block_size)
    return result
