"""Cheaper exit tests (issue 19 point 3): ``depthmux ee train-head`` and ``depthmux ee sweep-layers``.

* :func:`run_ee_train_head` (:class:`ExitHeadSpec`): give a saved early-exit model CALM's early-exit
  classifier (:class:`~depthmux.early_exit.ExitConfidenceHead`), trained on the consistency labels of its
  frozen shallow and deep exits over training blocks, judged on held-out blocks (AUC and accuracy, exit
  rate and agreement of the exited tokens per threshold, FREE's margin alongside), and save the model
  with the head (``exit_confidence "head"``) into a new folder, atomically, with ``exit_head.json``.
* :func:`run_ee_sweep_layers` (:class:`SweepLayersSpec`): for a pretrained LLaMA (SmolLM2 by default,
  converted with :func:`~depthmux.early_exit.from_llama`, no training) or a saved early-exit model, one
  forward per held-out block gives, for every candidate exit layer L_s, the shallow exit's agreement
  with the deep argmax, its NLL, and the exit rate / agreement at margin thresholds (optionally of a
  head fitted per layer too), so a user chooses L_s by measurement.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from depthmux.early_exit import (
    DEFAULT_THRESHOLDS,
    L2_GRID,
    EarlyExitConfig,
    ExitConfidenceHead,
    ExitFeatures,
    check_exit_layer,
    check_threshold,
    collect_exit_features,
    collect_layer_features,
    exit_head_report,
    exit_table,
    fit_exit_head,
    from_llama,
    require_early_exit,
    roc_auc,
)
from depthmux.errors import DepthmuxError
from depthmux.lm import load_lm, load_saved_tokenizer, pretrained_model_dir, resolve_model_dir
from depthmux.recipes.lm import LMDataSpec, check_block_size, eval_data_spec, prepare_lm_data
from depthmux.utils.checkpoint import atomic_directory
from depthmux.utils.checks import check_float, check_int, check_model_folder, check_seed, check_writable_parent
from depthmux.utils.progress import log_above, progress_bar


def check_new_folder(option: str, out: str | Path) -> None:
    """One line unless ``out`` can become a new folder: absent or an empty folder, its parent writable."""
    out = Path(out)
    if str(out) in ("", "."):
        raise DepthmuxError(f"{option} needs a folder name")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DepthmuxError(f"{option} {out} exists and is not an empty folder: choose a new folder")
    check_writable_parent(option, out)


def _check_thresholds(thresholds) -> None:
    if not thresholds:
        raise DepthmuxError("--thresholds needs at least one threshold")
    for t in thresholds:
        check_threshold(t)


@dataclass
class ExitHeadSpec:
    """``depthmux ee train-head``: which early-exit model, where to save it, the data and the fit.

    ``train_blocks`` blocks of the TRAINING split give the labels (one frozen forward each);
    ``eval_blocks`` held-out blocks judge the head. ``corpus`` / ``block_size``: default the run's.
    """

    model: str
    out: str
    corpus: str | None = None
    block_size: int | None = None
    train_blocks: int = 64
    eval_blocks: int = 32
    steps: int = 300
    lr: float = 1e-2
    batch_size: int = 4
    token_batch: int = 4096
    seed: int = 0
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    l2: float | None = None

    def fit_steps(self) -> int:
        """Adam steps in all (one fit per penalty of the grid, then the final one, when ``l2`` is None)."""
        return self.steps * (1 if self.l2 is not None else len(L2_GRID) + 1)

    def validate(self) -> ExitHeadSpec:
        check_int("--train-blocks", self.train_blocks, 1)
        check_int("--eval-blocks", self.eval_blocks, 1)
        check_int("--steps", self.steps, 1)
        check_float("--lr", self.lr, 0.0, low_open=True)
        check_int("--batch-size", self.batch_size, 1)
        check_int("--token-batch", self.token_batch, 1)
        check_int("--block-size", self.block_size, 2, allow_none=True)
        check_seed("--seed", self.seed)
        check_float("--l2", self.l2, 0.0, allow_none=True)
        _check_thresholds(self.thresholds)
        check_new_folder("--out", self.out)
        return self


def run_ee_train_head(spec: ExitHeadSpec, log: Callable[[str], object] = print, progress: bool = True) -> dict:
    """Train, judge and save (module docstring). Returns the report (also ``<out>/exit_head.json``)."""
    spec.validate()
    model_dir = resolve_model_dir(spec.model)
    kind = check_model_folder(model_dir, weights=False).get("model_type")
    if kind != EarlyExitConfig.model_type:
        raise DepthmuxError(
            f"{model_dir} holds a {kind!r} model without a shallow exit: train-head needs an early-exit model "
            f"(model type {EarlyExitConfig.model_type!r}, from 'depthmux ee train')"
        )
    data = eval_data_spec(spec.model, corpus=spec.corpus, block_size=spec.block_size)
    data = replace(data, max_train_blocks=spec.train_blocks, max_eval_blocks=spec.eval_blocks).validate()
    check_block_size(data.block_size, model_dir, model_dir)
    tokenizer = load_saved_tokenizer(model_dir)
    _, train, held = prepare_lm_data(data, tokenizer=tokenizer)  # data errors before the weights load
    if held is None:
        raise DepthmuxError("no held-out documents: use a holdout fraction > 0 and at least two documents")
    model = require_early_exit(load_lm(model_dir))
    bar = progress_bar(len(train) + len(held) + spec.fit_steps(), "train-head", "it", progress)
    say = log_above(bar, log)
    done = {"n": 0}

    def advance(to: int) -> None:
        bar.update(to - done["n"])
        done["n"] = to

    features = collect_exit_features(model, train, spec.batch_size, on_batch=advance)
    base = len(train)
    held_features = collect_exit_features(model, held, spec.batch_size, on_batch=lambda n: advance(base + n))
    base += len(held)
    head = model.attach_exit_head()
    fit = fit_exit_head(
        head, features, spec.steps, spec.lr, spec.token_batch, spec.seed, lambda s, _: advance(base + s), spec.l2
    )
    losses = fit["losses"]
    bar.close()
    report = exit_head_report(head, held_features, spec.thresholds)
    tail = losses[-min(20, len(losses)) :]
    result = {
        "model": str(model_dir),
        "out": str(spec.out),
        "exit_layer": model.config.exit_layer,
        "num_layers": model.config.num_hidden_layers,
        "data": asdict(data),
        "settings": {k: v for k, v in asdict(spec).items() if k not in ("model", "out")},
        "train_positions": len(features),
        "train_agreement": float(features.agree.float().mean()),
        "train_bce_first": losses[0],
        "train_bce_last20": sum(tail) / len(tail),
        "l2": fit["l2"],
        "validation_bce": {str(k): v for k, v in fit["validation_bce"].items()},
        "held_out": report,
    }
    say(
        f"held-out ({report['positions']} positions, shallow == deep at {report['agreement']:.3f}): head AUC "
        f"{_fmt(report['auc_head'])} (margin {_fmt(report['auc_margin'])}), accuracy {report['accuracy']:.3f} "
        f"(always guessing the commoner label: {report['majority_accuracy']:.3f}); L2 penalty {fit['l2']:g}"
    )
    with atomic_directory(Path(spec.out)) as tmp:
        model.save_pretrained(str(tmp))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        (tmp / "exit_head.json").write_text(json.dumps(result, indent=2))
    return result


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


# ---------------------------------------------------------------------------------------------
# the exit-layer sweep


@dataclass
class SweepLayersSpec:
    """``depthmux ee sweep-layers``: candidate exit layers of one model, measured on held-out text.

    ``model``: ``"smollm2"``, a LLaMA-family folder (converted with ``from_llama``, untrained exit) or an
    early-exit run/model. ``head_steps`` > 0 also fits a confidence head per layer on ``train_blocks``
    training blocks (``head_steps`` Adam steps per fit, the L2 penalty chosen as in ``fit_exit_head``) and
    reports it on the same held-out blocks.
    """

    model: str = "smollm2"
    layers: tuple[int, ...] = (4, 8, 12, 16)
    corpus: str = "shakespeare"
    block_size: int = 128
    holdout: float = 0.1
    seed: int = 0
    eval_blocks: int = 16
    batch_size: int = 4
    thresholds: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8, 0.9)
    head_steps: int = 0
    train_blocks: int = 32
    head_lr: float = 1e-2

    def validate(self) -> SweepLayersSpec:
        if not self.layers:
            raise DepthmuxError("--layers needs at least one exit layer")
        for layer in self.layers:
            check_int("--layers", layer, 1)
        check_int("--block-size", self.block_size, 2)
        check_float("--holdout", self.holdout, 0.0, 1.0, low_open=True, high_open=True)
        check_seed("--seed", self.seed)
        check_int("--eval-blocks", self.eval_blocks, 1)
        check_int("--batch-size", self.batch_size, 1)
        _check_thresholds(self.thresholds)
        check_int("--head-steps", self.head_steps, 0)
        check_int("--train-blocks", self.train_blocks, 1)
        check_float("--head-lr", self.head_lr, 0.0, low_open=True)
        return self


def _sweep_source(source: str, layers: tuple[int, ...]) -> tuple[Path, dict]:
    """The folder whose layers are swept and its config, every candidate layer checked against its depth
    (before any weights load)."""
    path = pretrained_model_dir(source)
    config = check_model_folder(path, weights=False)
    num_layers = config.get("num_hidden_layers")
    if not isinstance(num_layers, int):
        raise DepthmuxError(f"{path / 'config.json'} has no integer num_hidden_layers")
    kind = config.get("model_type")
    if kind not in ("llama", EarlyExitConfig.model_type):
        raise DepthmuxError(
            f"sweep-layers needs a LLaMA model (converted with from_llama) or an early-exit model; {path} holds "
            f"a {kind!r} model"
        )
    for layer in layers:
        check_exit_layer(layer, num_layers)
    return path, config


def run_ee_sweep_layers(
    spec: SweepLayersSpec, log: Callable[[str], object] = print, progress: bool = True
) -> dict[str, Any]:
    """The sweep (module docstring). Returns ``{"model", "num_layers", "deep_nll", "layers": [{"exit_layer",
    "agreement", "shallow_nll", "auc_margin", "margin": [...], "layer_compute": [...], ["head": {...}]}]}``.

    ``layer_compute`` (per margin threshold): the share of the decoder layers' work per token if tokens
    above the threshold skip the deep layers, ``(L_s + (1 - exit_rate)(L - L_s)) / L``: a bound from
    counting layers, not a measured time (the LM head and synchronized parallel decoding's catch-up are
    not in it)."""
    spec.validate()
    layers = tuple(sorted(set(spec.layers)))
    path, config = _sweep_source(spec.model, layers)
    check_block_size(spec.block_size, config, spec.model)
    tokenizer = load_saved_tokenizer(path)
    if tokenizer is None:
        raise DepthmuxError(f"{path} has no tokenizer: sweep-layers reads held-out text with the model's own")
    vocab = config.get("vocab_size")
    if isinstance(vocab, int) and len(tokenizer) > vocab:
        raise DepthmuxError(f"the tokenizer has {len(tokenizer)} tokens but the model only {vocab}")
    data = LMDataSpec(
        corpus=spec.corpus,
        block_size=spec.block_size,
        holdout=spec.holdout,
        seed=spec.seed,
        max_train_blocks=spec.train_blocks,
        max_eval_blocks=spec.eval_blocks,
    ).validate()
    _, train, held = prepare_lm_data(data, tokenizer=tokenizer)
    if held is None:
        raise DepthmuxError("no held-out documents: the corpus needs at least two documents")
    trained = config.get("model_type") == EarlyExitConfig.model_type
    model = require_early_exit(load_lm(path)) if trained else from_llama(path, exit_layer=layers[0])
    L = model.config.num_hidden_layers
    total = len(held) + (len(train) + spec.head_steps * (len(L2_GRID) + 1) * len(layers) if spec.head_steps else 0)
    bar = progress_bar(total, "sweep-layers", "it", progress)
    say = log_above(bar, log)
    seen = {"n": 0}

    def advance(to: int) -> None:
        bar.update(to - seen["n"])
        seen["n"] = to

    feats, nll, deep_nll = collect_layer_features(model, held, list(layers), spec.batch_size, on_batch=advance)
    train_feats: dict[int, ExitFeatures] = {}
    if spec.head_steps:
        base = seen["n"]
        train_feats, _, _ = collect_layer_features(
            model, train, list(layers), spec.batch_size, on_batch=lambda n: advance(base + n)
        )
    rows = []
    for p in layers:
        f = feats[p]
        margin = exit_table(f.margin, f.agree, spec.thresholds)
        row: dict[str, Any] = {
            "exit_layer": p,
            "agreement": float(f.agree.float().mean()),
            "shallow_nll": nll[p],
            "auc_margin": roc_auc(f.margin, f.agree),
            "margin": margin,
            "layer_compute": [(p + (1 - r["exit_rate"]) * (L - p)) / L for r in margin],
        }
        if spec.head_steps:
            head = ExitConfidenceHead(model.config.hidden_size)
            base = seen["n"]
            fit = fit_exit_head(
                head,
                train_feats[p],
                spec.head_steps,
                spec.head_lr,
                seed=spec.seed,
                on_step=lambda s, _, base=base: advance(base + s),
            )
            rep = exit_head_report(head, f, spec.thresholds)
            row["head"] = {k: rep[k] for k in ("auc_head", "accuracy", "majority_accuracy", "head")}
            row["head"]["l2"] = fit["l2"]
        rows.append(row)
        say(
            f"L_s {p:>3}/{L}: shallow == deep at {row['agreement']:.3f}, shallow NLL {nll[p]:.3f} (deep "
            f"{deep_nll:.3f}), margin AUC {_fmt(row['auc_margin'])}"
            + (f", head AUC {_fmt(row['head']['auc_head'])}" if "head" in row else "")
        )
    bar.close()
    return {
        "model": str(path),
        "num_layers": L,
        "corpus": spec.corpus,
        "block_size": spec.block_size,
        "eval_blocks": len(held),
        "positions": len(feats[layers[0]]),
        "deep_nll": deep_nll,
        "thresholds": list(spec.thresholds),
        "layers": rows,
        "early_exit_model": trained,
    }
