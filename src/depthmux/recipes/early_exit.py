"""Early-exit jobs end to end: what ``depthmux ee train / eval`` do (FREE, SPEC 2).

* :class:`EEModelSpec`: where the weights come from (SmolLM2 or a LLaMA folder), L_s and alpha;
  ``validate()`` checks every number up front (one line);
* :func:`build_ee_model`: a pretrained LLaMA -> :class:`~depthmux.early_exit.EarlyExitForCausalLM`;
* :func:`run_ee_train`: the packaged corpora through :func:`depthmux.recipes.lm.prepare_lm_data` and the
  generic loop :func:`depthmux.training.lm.train_lm` (accelerate, checkpoints, exact ``--resume``);
* :func:`run_ee_eval`: held-out NLL of the shallow and the deep exit, and how often they agree;
* :func:`run_ee_bench` (:class:`EEBenchConfig`): FREE thresholds, adaptive deltas and self-speculative
  runs against the deep model in the same engine and process (tokens/s, exit rate, agreement), and
  :func:`plot_ee_bench`.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from depthmux.early_exit import (
    EXIT_CONFIDENCES,
    AdaptiveThreshold,
    EarlyExitForCausalLM,
    ShallowExit,
    check_delta,
    check_threshold,
    from_llama,
    require_early_exit,
)
from depthmux.engine import LLM, SamplingParams
from depthmux.engine.early_exit import EarlyExitLLM, EarlyExitPolicy
from depthmux.errors import DepthmuxError
from depthmux.lm import evaluate_lm, load_lm, load_saved_tokenizer, pretrained_model_dir, resolve_model_dir
from depthmux.recipes.lm import (
    LMDataSpec,
    check_block_size,
    eval_data_spec,
    latest_model_and_tokenizer,
    prepare_lm_data,
    stored_run_specs,
)
from depthmux.training.lm import LMTrainConfig, LMTrainResult, train_lm
from depthmux.utils.checks import check_device, check_float, check_int, check_model_folder, check_output_file
from depthmux.utils.run_folder import RunFolder

__all__ = [
    "EEBenchConfig",
    "EEModelSpec",
    "build_ee_model",
    "ee_tokenizer_spec",
    "plot_ee_bench",
    "run_ee_bench",
    "run_ee_eval",
    "run_ee_train",
]


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
    num_layers = check_model_folder(path).get("num_hidden_layers")
    if not isinstance(num_layers, int):
        raise DepthmuxError(f"{path / 'config.json'} has no integer num_hidden_layers")
    exit_layer = spec.exit_layer if spec.exit_layer is not None else default_exit_layer(num_layers)
    return from_llama(path, exit_layer=exit_layer, exit_mse_weight=spec.alpha).train()


def ee_tokenizer_spec(source: str) -> str:
    """The tokenizer of the source model: ``"smollm2"`` or the source folder."""
    return "smollm2" if source == "smollm2" else str(pretrained_model_dir(source))


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
        specs, config = stored_run_specs(config, {"ee_model": EEModelSpec, "data": LMDataSpec})
        model_spec, data_spec = specs["ee_model"], specs["data"]
    model_spec.validate()
    data_spec = replace(data_spec, tokenizer=ee_tokenizer_spec(model_spec.source)).validate()
    config.validate()
    if not config.resume:
        run.check_writable()
    newest = latest_model_and_tokenizer(run) if config.resume else None
    if newest is not None:
        model, tok = newest
        require_early_exit(model)
        check_block_size(data_spec.block_size, getattr(model.config, "max_position_embeddings", None), run.root)
        tokenizer, train, held = prepare_lm_data(data_spec, tokenizer=tok)
        model.train()
    else:
        check_block_size(data_spec.block_size, pretrained_model_dir(model_spec.source), model_spec.source)
        model = build_ee_model(model_spec)
        tokenizer, train, held = prepare_lm_data(data_spec)
        if len(tokenizer) > model.config.vocab_size:
            raise DepthmuxError(
                f"the tokenizer has {len(tokenizer)} tokens but the model only {model.config.vocab_size}"
            )
    extra = {
        "ee_model": asdict(model_spec),
        "data": asdict(data_spec),
        "exit": {"exit_layer": model.config.exit_layer, "num_layers": model.config.num_hidden_layers},
        "data_stats": {
            "train_blocks": len(train),
            "eval_blocks": len(held) if held else 0,
            "block_size": train.block_size,
            "vocab_size": len(tokenizer),
        },
    }
    return train_lm(model, train, held, config, tokenizer=tokenizer, extra_state=extra)


def run_ee_eval(
    model: str | os.PathLike, data_spec: LMDataSpec | None = None, batch_size: int = 8, max_batches: int | None = None
) -> dict[str, Any]:
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
    check_block_size(data_spec.block_size, model_dir, model_dir)
    _, _, held = prepare_lm_data(data_spec, tokenizer=load_saved_tokenizer(model_dir))
    if held is None:
        raise DepthmuxError("no held-out documents: use a holdout fraction > 0 and at least two documents")
    deep = evaluate_lm(lm, held, batch_size, max_batches)
    shallow = evaluate_lm(ShallowExit(lm), held, batch_size, max_batches)
    stats = deep.pop("router_stats")
    shallow.pop("router_stats")
    return {
        "deep": deep,
        "shallow": shallow,
        "exit_agreement": stats["exit_agreement"],
        "exit_confidence": stats["exit_confidence"],
        "exit_layer": lm.config.exit_layer,
        "num_layers": lm.config.num_hidden_layers,
        "model": str(model_dir),
        "params": lm.parameter_counts(),
        "corpus": data_spec.corpus,
        "block_size": data_spec.block_size,
    }


# ---------------------------------------------------------------------------------------------
# decoding benchmark (SPEC 2): the early-exit policies against the deep model in the same engine


@dataclass
class EEBenchConfig:
    """A sweep of early-exit decoding policies against the deep model, in one process (``depthmux ee bench``).

    ``model``: a saved early-exit model (run, checkpoint or model folder). Prompts: the first
    ``prompt_tokens`` tokens of the first ``num_prompts`` held-out blocks of the run's data (or of
    ``corpus``; blocks are packed documents, so a prompt may span a document boundary). Every
    configuration decodes them greedily for ``max_new_tokens`` tokens at each batch size B (at most B
    sequences in flight, continuous batching), after a warm-up of every configuration (the deep model on
    the whole workload, each policy on B prompts and a few tokens); configurations alternate within each
    of ``rounds`` rounds and the best round counts. ``thresholds``: fixed-threshold FREE runs;
    ``deltas``: adaptive-threshold runs; ``draft_tokens``: self-speculative runs. ``confidence``: the exit
    test of the threshold runs, "margin" or "head" (a model from ``ee train-head``); None: the model's own.
    The adaptive threshold is refused with the head (see :mod:`depthmux.engine.early_exit`).
    """

    model: str
    thresholds: tuple[float, ...] = (1.0, 0.9, 0.8, 0.6)
    deltas: tuple[float, ...] = ()
    draft_tokens: tuple[int, ...] = (4,)
    batch_sizes: tuple[int, ...] = (1, 16)
    num_prompts: int = 16
    prompt_tokens: int = 32
    max_new_tokens: int = 32
    rounds: int = 1
    corpus: str | None = None
    device: str = "cpu"
    plot: str | None = None
    confidence: str | None = None

    def validate(self) -> EEBenchConfig:
        if not (self.thresholds or self.deltas or self.draft_tokens):
            raise DepthmuxError(
                "nothing to benchmark: --thresholds, --deltas and --draft-tokens are all empty; give at least one value"
            )
        for t in self.thresholds:
            check_threshold(t)
        for d in self.deltas:
            check_delta(d)
        for k in self.draft_tokens:
            check_int("--draft-tokens", k, 1)
        if not self.batch_sizes:
            raise DepthmuxError("--batch-sizes needs at least one batch size")
        for b in self.batch_sizes:
            check_int("--batch-sizes", b, 1)
        check_int("--prompts", self.num_prompts, 1)
        check_int("--prompt-tokens", self.prompt_tokens, 1)
        check_int("--max-new-tokens", self.max_new_tokens, 1)
        check_int("--rounds", self.rounds, 1)
        check_device("--device", self.device)
        if self.confidence is not None and self.confidence not in EXIT_CONFIDENCES:
            raise DepthmuxError(f"--confidence must be one of {', '.join(EXIT_CONFIDENCES)}, got {self.confidence!r}")
        if self.plot is not None:
            from matplotlib.backend_bases import FigureCanvasBase

            check_output_file("--plot", self.plot, set(FigureCanvasBase.get_supported_filetypes()))
        return self


def _bench_prompts(cfg: EEBenchConfig, model_dir: Path) -> list[list[int]]:
    spec = eval_data_spec(cfg.model, corpus=cfg.corpus)
    spec = replace(spec, block_size=max(spec.block_size, cfg.prompt_tokens), max_eval_blocks=cfg.num_prompts)
    _, _, held = prepare_lm_data(spec.validate(), tokenizer=load_saved_tokenizer(model_dir))
    if held is None or len(held) < cfg.num_prompts:
        raise DepthmuxError(
            f"the held-out split has {0 if held is None else len(held)} blocks, fewer than --prompts {cfg.num_prompts}"
        )
    return [row[: cfg.prompt_tokens].tolist() for row in held.input_ids[: cfg.num_prompts]]


def run_ee_bench(cfg: EEBenchConfig) -> dict[str, Any]:
    """Tokens/s of every policy over the deep model in the same engine, exit rate, agreement with the deep
    model's greedy output (``token_agreement``: share of positions equal, ``exact``: share of identical
    sequences) and, for speculative runs, the draft acceptance rate. Returns a JSON-ready dict."""
    cfg.validate()
    model_dir = resolve_model_dir(cfg.model)
    model = require_early_exit(load_lm(model_dir)).to(cfg.device)
    head = EarlyExitPolicy(confidence=cfg.confidence).uses_head(model)  # a head the model lacks: one line
    if head and cfg.deltas:
        raise DepthmuxError(
            "--deltas (the adaptive threshold) needs the margin confidence: give --confidence margin, or no --deltas"
        )
    conf = cfg.confidence
    prompts = _bench_prompts(cfg, model_dir)
    params = SamplingParams(max_new_tokens=cfg.max_new_tokens, ignore_eos=True)
    configs: list[tuple[str, dict, Any]] = [("deep", {}, None)]
    configs += [
        (f"exit@{t}", {"threshold": t}, lambda t=t: EarlyExitPolicy(threshold=t, confidence=conf))
        for t in cfg.thresholds
    ]
    configs += [
        (f"adaptive@{d}", {"delta": d}, lambda d=d: EarlyExitPolicy(adaptive=AdaptiveThreshold(d), confidence=conf))
        for d in cfg.deltas
    ]
    configs += [
        (f"speculative@{k}", {"draft_tokens": k}, lambda k=k: EarlyExitPolicy(mode="speculative", draft_tokens=k))
        for k in cfg.draft_tokens
    ]

    def decode(policy_factory, batch: int, prompts=prompts, params=params):
        kw = dict(depth_policy="lockstep", max_batch_items=batch, max_num_seqs=batch)
        llm = LLM(model, **kw) if policy_factory is None else EarlyExitLLM(model, policy=policy_factory(), **kw)
        if cfg.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        outs = llm.generate(prompts, params)
        if cfg.device.startswith("cuda"):
            torch.cuda.synchronize()
        stats = llm.early_exit_stats.as_dict() if policy_factory is not None else {}
        return [o.token_ids for o in outs], time.perf_counter() - t0, stats

    results = []
    for batch in cfg.batch_sizes:
        decode(None, batch)  # warm-up: the deep model on the whole workload, then every policy on a short one
        warm = replace(params, max_new_tokens=min(params.max_new_tokens, 2 + max(cfg.draft_tokens, default=0)))
        for _, _, factory in configs[1:]:
            decode(factory, batch, prompts[:batch], warm)
        best: dict[str, tuple] = {}
        for _ in range(cfg.rounds):
            for name, _, factory in configs:
                tokens, seconds, stats = decode(factory, batch)
                if name not in best or seconds < best[name][1]:
                    best[name] = (tokens, seconds, stats)
        deep_tokens, deep_seconds, _ = best["deep"]
        n_tokens = sum(len(t) for t in deep_tokens)
        for name, setting, _ in configs:
            tokens, seconds, stats = best[name]
            same = sum(a == b for x, y in zip(tokens, deep_tokens, strict=True) for a, b in zip(x, y, strict=False))
            row = {
                "batch_size": batch,
                "config": name,
                **setting,
                "seconds": seconds,
                "tokens_per_s": sum(len(t) for t in tokens) / seconds,
                "speedup_vs_deep": deep_seconds / seconds,
                "token_agreement": same / n_tokens,
                "exact": sum(x == y for x, y in zip(tokens, deep_tokens, strict=True)) / len(prompts),
            }
            for key in ("exit_rate", "acceptance_rate", "final_threshold", "max_kept"):
                if key in stats:
                    row[key] = stats[key]
            if stats.get("verified_exits"):  # adaptive runs compare every exit with the deep model
                row["verified_exits"] = stats["verified_exits"]
                row["wrong_exit_rate"] = stats["wrong_exit_rate"]
                if "delta" in setting:
                    row["wrong_exit_within_1.5_delta"] = stats["wrong_exit_rate"] <= 1.5 * setting["delta"]
            results.append(row)
    out = {
        "model": str(model_dir),
        "device": cfg.device,
        "confidence": "head" if head else "margin",
        "exit_layer": model.config.exit_layer,
        "num_layers": model.config.num_hidden_layers,
        "prompts": len(prompts),
        "prompt_tokens": cfg.prompt_tokens,
        "max_new_tokens": cfg.max_new_tokens,
        "rounds": cfg.rounds,
        "results": results,
    }
    if cfg.plot:
        out["plot"] = str(plot_ee_bench(results, cfg.plot))
    return out


def plot_ee_bench(results: list[dict], path: str | os.PathLike) -> Path:
    """Speed-up over the deep model against token agreement, one series per batch size and kind of policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for batch in sorted({r["batch_size"] for r in results}):
        for kind, marker in (("exit", "o"), ("adaptive", "s"), ("speculative", "^")):
            rows = [r for r in results if r["batch_size"] == batch and r["config"].startswith(kind)]
            if rows:
                ax.plot(
                    [r["token_agreement"] for r in rows],
                    [r["speedup_vs_deep"] for r in rows],
                    marker=marker,
                    linestyle="-" if kind == "exit" else "none",
                    label=f"{kind}, batch {batch}",
                )
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xlabel("token agreement with deep greedy")
    ax.set_ylabel("tokens/s over the deep model")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
