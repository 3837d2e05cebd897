"""Early-exit jobs end to end: what ``depthmux ee train / eval`` do (FREE, SPEC 2).

* :class:`EEModelSpec`: where the weights come from (SmolLM2 or a LLaMA folder), L_s and alpha;
  ``validate()`` checks every number up front (one line);
* :func:`build_ee_model`: a pretrained LLaMA -> :class:`~depthmux.early_exit.EarlyExitForCausalLM`;
* :func:`run_ee_train`: the packaged corpora through :func:`depthmux.recipes.lm.prepare_lm_data` and the
  generic loop :func:`depthmux.training.lm.train_lm` (accelerate, checkpoints, exact ``--resume``);
* :func:`run_ee_eval`: held-out NLL of the shallow and the deep exit, and how often they agree.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from depthmux.early_exit import EarlyExitForCausalLM, ShallowExit, from_llama, require_early_exit
from depthmux.errors import DepthmuxError
from depthmux.lm import evaluate_lm, load_lm, load_saved_tokenizer, pretrained_model_dir, resolve_model_dir
from depthmux.recipes.lm import LMDataSpec, eval_data_spec, prepare_lm_data
from depthmux.training.lm import LMTrainConfig, LMTrainResult, train_lm
from depthmux.utils.checkpoint import read_json
from depthmux.utils.checks import check_float, check_int
from depthmux.utils.run_folder import RunFolder

__all__ = ["EEModelSpec", "build_ee_model", "ee_tokenizer_spec", "run_ee_eval", "run_ee_train"]


@dataclass
class EEModelSpec:
    """The early-exit model to train (SPEC 2).

    ``source``: ``"smollm2"`` (the packaged SmolLM2-135M, 30 layers) or a LLaMA-family model folder.
    ``exit_layer``: L_s, layers of the shallow exit (None: a quarter of the layers, at least 1).
    ``alpha``: weight of ``MSE(h_shallow, h_deep)`` in the FREE loss (0.5 in the public scripts).
    """

    source: str = "smollm2"
    exit_layer: int | None = None
    alpha: float = 0.5

    def validate(self) -> EEModelSpec:
        """One-line :class:`DepthmuxError` for the first invalid field; return self (L_s <= L - 1 is
        checked against the source model in :func:`build_ee_model`, before its weights are read)."""
        if not isinstance(self.source, str) or not self.source:
            raise DepthmuxError("--from must be smollm2 or a model folder")
        check_int("--exit-layer", self.exit_layer, 1, allow_none=True)
        check_float("--alpha", self.alpha, 0.0)
        return self


def default_exit_layer(num_layers: int) -> int:
    """A quarter of the layers, at least 1 (7 of SmolLM2's 30)."""
    return max(1, num_layers // 4)


def build_ee_model(spec: EEModelSpec) -> EarlyExitForCausalLM:
    """The early-exit model of ``spec`` with the source's weights (float32, train mode)."""
    spec.validate()
    path = pretrained_model_dir(spec.source)
    cfg = read_json(path / "config.json", f"cannot read the model config in {path}")
    num_layers = cfg.get("num_hidden_layers") if isinstance(cfg, dict) else None
    if not isinstance(num_layers, int):
        raise DepthmuxError(f"{path / 'config.json'} has no integer num_hidden_layers")
    exit_layer = spec.exit_layer if spec.exit_layer is not None else default_exit_layer(num_layers)
    return from_llama(path, exit_layer=exit_layer, exit_mse_weight=spec.alpha).train()


def ee_tokenizer_spec(source: str) -> str:
    """The tokenizer of the source model: ``"smollm2"`` or the source folder."""
    return "smollm2" if source == "smollm2" else str(pretrained_model_dir(source))


def _stored(cls, stored: Any, what: str, root: Path):
    names = {f.name for f in fields(cls)}
    if not isinstance(stored, dict) or not set(stored) <= names:
        raise DepthmuxError(f"{root / 'train_config.json'}: '{what}' is missing or malformed")
    return cls(**stored)


def run_ee_train(model_spec: EEModelSpec, data_spec: LMDataSpec, config: LMTrainConfig) -> LMTrainResult:
    """Build the early-exit model from ``model_spec.source``, train it with the FREE loss, save it.

    The data's tokenizer is always the source model's (``data_spec.tokenizer`` is replaced). Every spec
    is validated before any work. With ``config.resume`` the run folder's stored model, data and
    training settings are used (only ``out_dir``, ``resume`` and ``progress`` come from ``config``), and
    the model and tokenizer come from the newest intact checkpoint, or are rebuilt when the run was
    stopped before its first one (weights, optimizer and RNG are restored by ``train_lm``).
    """
    config.validate()
    run = RunFolder(config.out_dir)
    if config.resume:
        if not run.has_json("train_config"):
            raise DepthmuxError(f"--resume: no checkpoint under {run.checkpoint_root} and no train_config.json")
        meta = run.read_json("train_config")
        model_spec = _stored(EEModelSpec, meta.get("ee_model"), "ee_model", run.root)
        data_spec = _stored(LMDataSpec, meta.get("data"), "data", run.root)
        stored = dict(meta.get("train") or {})
        stored.update(resume=True, progress=config.progress, out_dir=str(run.root))
        stored["betas"] = tuple(stored.get("betas", LMTrainConfig.betas))
        config = _stored(LMTrainConfig, stored, "train", run.root)
    model_spec.validate()
    data_spec = replace(data_spec, tokenizer=ee_tokenizer_spec(model_spec.source)).validate()
    config.validate()
    if not config.resume:
        run.check_writable()
    newest = run.latest_checkpoint(lambda d: (load_lm(d / "model"), load_saved_tokenizer(d / "model"))) \
        if config.resume else None
    if newest is not None:
        model, tok = newest[2]
        require_early_exit(model)
        tokenizer, train, held = prepare_lm_data(data_spec, tokenizer=tok)
        model.train()
    else:
        model = build_ee_model(model_spec)
        tokenizer, train, held = prepare_lm_data(data_spec)
        if len(tokenizer) > model.config.vocab_size:
            raise DepthmuxError(f"the tokenizer has {len(tokenizer)} tokens but the model only "
                                f"{model.config.vocab_size}")
    extra = {"ee_model": asdict(model_spec), "data": asdict(data_spec),
             "exit": {"exit_layer": model.config.exit_layer, "num_layers": model.config.num_hidden_layers},
             "data_stats": {"train_blocks": len(train), "eval_blocks": len(held) if held else 0,
                            "block_size": train.block_size, "vocab_size": len(tokenizer)}}
    return train_lm(model, train, held, config, tokenizer=tokenizer, extra_state=extra)


def run_ee_eval(model: str | os.PathLike, data_spec: LMDataSpec | None = None, batch_size: int = 8,
                max_batches: int | None = None) -> dict[str, Any]:
    """Held-out NLL of the shallow and the deep exit of a saved early-exit model: what ``depthmux ee eval`` does.

    ``model`` is a run folder, a checkpoint or a model folder; without ``data_spec`` the run's stored data
    settings are reused (the same held-out documents). Returns ``{"deep": {nll, ppl, ...}, "shallow":
    {...}, "exit_agreement", "exit_confidence", "exit_layer", "num_layers", "model", "params", "corpus",
    "block_size"}``; ``exit_agreement`` is the share of held-out positions where the shallow and deep
    argmax agree, ``exit_confidence`` the mean p_top1 - p_top2 of the shallow exit.
    """
    check_int("--batch-size", batch_size, 1)
    check_int("--max-blocks", max_batches, 1, allow_none=True)
    model_dir = resolve_model_dir(model)
    lm = require_early_exit(load_lm(model_dir))
    data_spec = (data_spec or eval_data_spec(model)).validate()
    _, _, held = prepare_lm_data(data_spec, tokenizer=load_saved_tokenizer(model_dir))
    if held is None:
        raise DepthmuxError("no held-out documents: use a holdout fraction > 0 and at least two documents")
    deep = evaluate_lm(lm, held, batch_size, max_batches)
    shallow = evaluate_lm(ShallowExit(lm), held, batch_size, max_batches)
    stats = deep.pop("router_stats")
    shallow.pop("router_stats")
    return {"deep": deep, "shallow": shallow, "exit_agreement": stats["exit_agreement"],
            "exit_confidence": stats["exit_confidence"], "exit_layer": lm.config.exit_layer,
            "num_layers": lm.config.num_hidden_layers, "model": str(model_dir), "params": lm.parameter_counts(),
            "corpus": data_spec.corpus, "block_size": data_spec.block_size}
