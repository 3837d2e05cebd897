"""Language-model jobs end to end: what ``depthmux lm train / eval / convert`` do (SPEC 3, SPEC 4).

* :class:`LMModelSpec` / :class:`LMDataSpec`: how to obtain the model and the packed data (both
  with ``validate()``: every number checked up front, one-line errors);
* :func:`build_lm_model`, :func:`prepare_lm_data`: build them;
* :func:`run_lm_train`: data + model + :func:`depthmux.training.lm.train_lm`; with ``resume`` the
  run folder's stored settings are used;
* :func:`run_lm_eval`, :func:`eval_data_spec`, :func:`find_run_config`: evaluate a saved model on
  the held-out split its run trained against (or on data given explicitly);
* :func:`run_lm_convert`: a pretrained LLaMA -> a (relaxed) recursive model folder.

Length: the one LM job (its two specs with their up-front checks, train / resume, eval, convert) whose
parts the early-exit and MoR recipes reuse; splitting it would scatter the specs from their checks.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch

from depthmux.data.text import (
    corpus_parts,
    load_corpus,
    load_tokenizer,
    pack_documents,
    split_corpus,
    train_bpe_tokenizer,
)
from depthmux.errors import DepthmuxError, require
from depthmux.lm import CausalLM, evaluate_lm, load_lm, load_saved_tokenizer, pretrained_model_dir, resolve_model_dir
from depthmux.lm.hf_adapter import as_causal_lm
from depthmux.recursion import (
    INIT_METHODS,
    MOR_KV_STRATEGIES,
    MOR_ROUTERS,
    SHARING_STRATEGIES,
    RecursiveConfig,
    RecursiveForCausalLM,
    convert_llama_to_recursive,
)
from depthmux.training.lm import LMTrainConfig, LMTrainResult, train_lm
from depthmux.utils.checks import check_float, check_int, check_model_folder, check_seed, check_writable_parent

__all__ = [
    "LMDataSpec",
    "LMModelSpec",
    "LMTrainConfig",
    "LMTrainResult",
    "build_lm_model",
    "eval_data_spec",
    "find_run_config",
    "prepare_lm_data",
    "run_lm_convert",
    "run_lm_eval",
    "run_lm_train",
]
from depthmux.utils.checkpoint import atomic_directory
from depthmux.utils.run_folder import RunFolder


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

    @property
    def router_name(self) -> str | None:
        """``router`` with ``"none"`` / ``""`` read as None."""
        return None if self.router in (None, "", "none") else self.router

    @property
    def intermediate_size(self) -> int:
        return self.intermediate or 32 * math.ceil(8 * self.hidden / 3 / 32)

    def recursive_config(self, vocab_size: int, eos_token_id: int | None = None) -> RecursiveConfig:
        """The from-scratch model's config (raises the config's one-line errors on bad combinations)."""
        return RecursiveConfig(
            vocab_size=vocab_size,
            hidden_size=self.hidden,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            num_key_value_heads=self.kv_heads or self.heads,
            num_recursions=self.recursions,
            sharing=self.sharing,
            relaxation_rank=self.lora_rank,
            mor_router=self.router_name,
            mor_kv=self.kv,
            eos_token_id=eos_token_id,
            use_cache=False,
        )

    def validate(self) -> LMModelSpec:
        """One-line :class:`DepthmuxError` for the first invalid field or combination; return self."""
        check_int("--recursions", self.recursions, 1)
        check_int("--lora-rank", self.lora_rank, 0)
        check_seed("--seed", self.seed)
        if self.sharing not in SHARING_STRATEGIES:
            raise DepthmuxError(f"unknown --sharing {self.sharing!r}: use one of {', '.join(SHARING_STRATEGIES)}")
        if self.router_name not in MOR_ROUTERS:
            raise DepthmuxError(f"unknown --router {self.router!r}: use none, expert or token")
        if self.kv not in MOR_KV_STRATEGIES:
            raise DepthmuxError(f"unknown --kv {self.kv!r}: use one of {', '.join(MOR_KV_STRATEGIES)}")
        if self.init not in INIT_METHODS:
            raise DepthmuxError(f"unknown --init {self.init!r}: use one of {', '.join(INIT_METHODS)}")
        if self.convert and not self.from_pretrained:
            raise DepthmuxError("--convert needs --from-pretrained (smollm2 or a folder)")
        if self.from_pretrained:
            return self
        check_int("--hidden", self.hidden, 1)
        check_int("--layers", self.layers, 1)
        check_int("--heads", self.heads, 1)
        check_int("--kv-heads", self.kv_heads, 1, allow_none=True)
        check_int("--intermediate", self.intermediate, 1, allow_none=True)
        if self.hidden % self.heads:
            raise DepthmuxError(f"--hidden {self.hidden} is not a multiple of --heads {self.heads}")
        if self.heads % (self.kv_heads or self.heads):
            raise DepthmuxError(f"--heads {self.heads} is not a multiple of --kv-heads {self.kv_heads}")
        self.recursive_config(vocab_size=2)
        return self


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

    def validate(self) -> LMDataSpec:
        """One-line :class:`DepthmuxError` for the first invalid field; return self."""
        check_int("--block-size", self.block_size, 2)
        check_float("--holdout", self.holdout, 0.0, 1.0, high_open=True)
        check_seed("--seed", self.seed)
        check_int("--max-train-blocks", self.max_train_blocks, 1, allow_none=True)
        check_int("--max-eval-blocks", self.max_eval_blocks, 1, allow_none=True)
        if str(self.tokenizer).startswith("bpe:"):
            self.bpe_vocab_size()
        return self

    def bpe_vocab_size(self) -> int:
        """N of ``"bpe:N"``."""
        try:
            return int(str(self.tokenizer)[4:])
        except ValueError:
            raise DepthmuxError(f"bad tokenizer '{self.tokenizer}': use bpe:<vocab size>") from None


def check_block_size(block_size: int, context: Any, model: Any) -> None:
    """``--block-size`` above the model's context (``max_position_embeddings``; ``context`` is that number,
    a config dict or a model folder) is a one-line error, before any data or model work (a block that long
    would also need a ``[T, T]`` attention mask per sequence)."""
    if isinstance(context, (str, os.PathLike)):
        context = check_model_folder(Path(context), weights=False)
    if isinstance(context, dict):
        context = context.get("max_position_embeddings")
    if isinstance(context, int) and not isinstance(context, bool) and block_size > context:
        raise DepthmuxError(
            f"--block-size {block_size} is above the context of {model} ({context} tokens, max_position_embeddings)"
        )


def build_lm_model(spec: LMModelSpec, vocab_size: int | None = None, eos_token_id: int | None = None) -> CausalLM:
    """Instantiate the model described by ``spec`` (float32, train mode)."""
    spec.validate()
    if spec.from_pretrained:
        path = pretrained_model_dir(spec.from_pretrained)
        if spec.convert:
            extra = {"mor_router": spec.router_name, "mor_kv": spec.kv} if spec.router_name else {}
            model = convert_llama_to_recursive(
                path,
                num_recursions=spec.recursions,
                sharing=spec.sharing,
                init=spec.init,
                relaxation_rank=spec.lora_rank,
                **extra,
            )
        else:
            model = load_lm(path)
        model = as_causal_lm(model)
        embeddings = model.get_input_embeddings().num_embeddings
        if vocab_size is not None and embeddings < vocab_size:
            raise DepthmuxError(
                f"the tokenizer has {vocab_size} tokens but {spec.from_pretrained} only "
                f"{embeddings}: use its own tokenizer"
            )
        return model.train()
    if vocab_size is None:
        raise DepthmuxError("a model from scratch needs the tokenizer's vocabulary size")
    cfg = spec.recursive_config(vocab_size, eos_token_id)
    torch.manual_seed(spec.seed)
    return RecursiveForCausalLM(cfg).train()


def prepare_lm_data(spec: LMDataSpec, tokenizer=None):
    """Load, split (by document, seeded), tokenize and pack. Returns ``(tokenizer, train, eval)`` (both
    :class:`~depthmux.data.text.PackedBlocks` ``[N, T]``; eval None with ``holdout`` 0; a single document
    with ``holdout`` > 0 is refused). A given ``tokenizer`` replaces ``spec.tokenizer``."""
    spec.validate()
    for part in corpus_parts(spec.corpus):  # the split cannot give both sides a document of a one-document part
        require(
            len(load_corpus(part)) > 1 or spec.holdout == 0,
            f"corpus '{part}' is a single document: nothing to hold out for --holdout {spec.holdout}; give at "
            "least two documents (separated by a blank line), or --holdout 0 to train without a held-out evaluation",
        )
    train_docs, eval_docs = split_corpus(spec.corpus, spec.holdout, spec.seed)  # per part of a mixed corpus
    if tokenizer is None:
        if str(spec.tokenizer).startswith("bpe:"):
            tokenizer = train_bpe_tokenizer(train_docs, spec.bpe_vocab_size())
        else:
            tokenizer = load_tokenizer(spec.tokenizer)
    train = pack_documents(train_docs, tokenizer, spec.block_size, seed=spec.seed, max_blocks=spec.max_train_blocks)
    held = (
        pack_documents(eval_docs, tokenizer, spec.block_size, seed=spec.seed, max_blocks=spec.max_eval_blocks)
        if eval_docs
        else None
    )
    return tokenizer, train, held


def _spec(cls, stored: Any, what: str, root: Path):
    names = {f.name for f in fields(cls)}
    if not isinstance(stored, dict) or not set(stored) <= names:
        raise DepthmuxError(f"{root / 'train_config.json'}: '{what}' is missing or malformed")
    return cls(**stored)


def stored_run_specs(config: LMTrainConfig, specs: dict[str, type]) -> tuple[dict[str, Any], LMTrainConfig]:
    """For ``--resume``: the specs a run folder stored in ``train_config.json`` (``{key: spec class}``)
    and its training config; only ``out_dir``, ``resume`` and ``progress`` come from ``config``.
    One-line errors for a folder without ``train_config.json``, with a malformed entry, or in use by
    another run (its lock is tried and released; training takes it again)."""
    run = RunFolder(config.out_dir)
    if not run.has_json("train_config"):
        raise DepthmuxError(f"--resume: no checkpoint under {run.checkpoint_root} and no train_config.json")
    with run.lock():  # a run still writing here is one line now, before any checkpoint is read
        pass
    meta = run.read_json("train_config")
    loaded = {key: _spec(cls, meta.get(key), key, run.root) for key, cls in specs.items()}
    stored = dict(meta.get("train") or {})
    stored.update(resume=True, progress=config.progress, out_dir=str(run.root))
    stored["betas"] = tuple(stored.get("betas", LMTrainConfig.betas))
    return loaded, _spec(LMTrainConfig, stored, "train", run.root)


def latest_model_and_tokenizer(run: RunFolder) -> tuple[CausalLM, Any] | None:
    """For ``--resume``: the model and tokenizer of the run's newest intact checkpoint (a corrupt newer
    one is skipped), or None when the run stopped before its first checkpoint."""
    newest = run.latest_checkpoint(lambda d: (load_lm(d / "model"), load_saved_tokenizer(d / "model")))
    return None if newest is None else newest[2]


def run_lm_train(model_spec: LMModelSpec, data_spec: LMDataSpec, config: LMTrainConfig) -> LMTrainResult:
    """Build data and model, train, save: what ``depthmux lm train`` does.

    Every spec is validated before any work. With ``config.resume`` the run folder's stored model,
    data and training settings are used (only ``out_dir``, ``resume`` and ``progress`` are taken
    from ``config``); the model and tokenizer come from the newest intact checkpoint (weights,
    optimizer and RNG are restored by :func:`~depthmux.training.lm.train_lm`), or are rebuilt from
    the stored specs when the run was stopped before its first checkpoint.
    """
    config.validate()
    run = RunFolder(config.out_dir)
    if config.resume:
        specs, config = stored_run_specs(config, {"data": LMDataSpec, "model_spec": LMModelSpec})
        data_spec, model_spec = specs["data"], specs["model_spec"]
    model_spec.validate()
    data_spec.validate()
    config.validate()
    if not config.resume:
        run.check_writable()
    newest = latest_model_and_tokenizer(run) if config.resume else None
    if newest is not None:
        check_block_size(data_spec.block_size, getattr(newest[0].config, "max_position_embeddings", None), run.root)
    elif model_spec.from_pretrained:  # before its tokenizer reads the folder's config
        source = check_model_folder(pretrained_model_dir(model_spec.from_pretrained))
        check_block_size(data_spec.block_size, source, model_spec.from_pretrained)
    else:
        check_block_size(data_spec.block_size, model_spec.recursive_config(vocab_size=2).max_position_embeddings,
                         "a model from scratch")  # fmt: skip
    if newest is not None:
        model, tok = newest
        tokenizer, train, held = prepare_lm_data(data_spec, tokenizer=tok)
        model.train()
    else:
        tokenizer, train, held = prepare_lm_data(data_spec)
        model = build_lm_model(model_spec, len(tokenizer), tokenizer.eos_token_id)
    extra = {
        "data": asdict(data_spec),
        "model_spec": asdict(model_spec),
        "data_stats": {
            "train_blocks": len(train),
            "eval_blocks": len(held) if held else 0,
            "block_size": train.block_size,
            "vocab_size": len(tokenizer),
        },
    }
    return train_lm(model, train, held, config, tokenizer=tokenizer, extra_state=extra)


def find_run_config(path: str | os.PathLike) -> dict | None:
    """The ``train_config.json`` of the run that ``path`` belongs to (a run folder, its ``model/``, or a
    checkpoint ``checkpoints/step-N[/model]``), or None; a corrupt one is a one-line error."""
    p = Path(path)
    for d in (p, p.parent, p.parent.parent, p.parent.parent.parent):
        run = RunFolder(d)
        if run.has_json("train_config"):
            return run.read_json("train_config")
    return None


def eval_data_spec(model: str | os.PathLike, **overrides) -> LMDataSpec:
    """The held-out data to evaluate ``model`` on: its run's stored data settings with ``overrides``
    (None values ignored). A model outside a run folder needs ``corpus`` in ``overrides``."""
    given = {k: v for k, v in overrides.items() if v is not None}
    meta = find_run_config(model) if Path(model).exists() else None
    if meta is not None and "data" in meta:
        spec = _spec(LMDataSpec, meta["data"], "data", Path(model))
    elif "corpus" in given:
        spec = LMDataSpec()
    else:
        resolve_model_dir(model)  # a missing model is the clearer error
        raise DepthmuxError(
            f"{model} has no train_config.json to say which data it was trained on: "
            "give --corpus (and --block-size, --holdout, --seed if they differ from the defaults)"
        )
    return replace(spec, **given).validate()


def run_lm_eval(
    model: str | os.PathLike,
    data_spec: LMDataSpec | None = None,
    batch_size: int = 8,
    max_batches: int | None = None,
    routing: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate a saved model on held-out text: what ``depthmux lm eval`` does (``progress``: a bar per
    evaluation, on stderr).

    ``model`` is a run folder, a checkpoint's ``model/`` or any model folder. Without
    ``data_spec`` the run's stored data settings are reused (the same held-out documents); a
    model without a run needs ``data_spec``. For MoR expert-choice models both routings are
    reported: the result's top level uses the decoding rule (``causal``) and ``"topk"`` holds the
    top-k result whose ``router_stats.causal_agreement`` is the causal-vs-top-k agreement.
    """
    if routing not in (None, "topk", "causal"):
        raise DepthmuxError(f"unknown routing '{routing}': use topk or causal")
    check_int("--batch-size", batch_size, 1)
    check_int("--max-blocks", max_batches, 1, allow_none=True)
    model_dir = resolve_model_dir(model)
    data_spec = (data_spec or eval_data_spec(model)).validate()
    check_block_size(data_spec.block_size, model_dir, model_dir)
    lm = load_lm(model_dir)  # first: an unsupported model fails before any tokenizer or data work
    is_expert = isinstance(lm, RecursiveForCausalLM) and lm.config.mor_router == "expert"
    router = lm.config.mor_router if isinstance(lm, RecursiveForCausalLM) else None
    routers = "no routers" if router is None else f"{router}-choice routers"
    require(routing is None or is_expert, f"--routing is for expert-choice MoR models; {model_dir} has {routers}")
    _, _, held = prepare_lm_data(data_spec, tokenizer=load_saved_tokenizer(model_dir))
    if held is None:
        raise DepthmuxError("no held-out documents: use a holdout fraction > 0 and at least two documents")
    rule = routing or ("causal" if is_expert else None)
    result = evaluate_lm(
        lm, held, batch_size, max_batches, routing=rule, progress=progress, desc=f"eval {rule or ''}".strip()
    )
    if is_expert and routing is None:
        result["topk"] = evaluate_lm(
            lm, held, batch_size, max_batches, routing="topk", progress=progress, desc="eval topk"
        )
    result.update(
        model=str(model_dir), params=lm.parameter_counts(), corpus=data_spec.corpus, block_size=data_spec.block_size
    )
    return result


def run_lm_convert(
    out: str | os.PathLike,
    source: str = "smollm2",
    recursions: int = 3,
    sharing: str = "cycle",
    init: str = "stepwise",
    lora_rank: int = 0,
) -> tuple[CausalLM, Path]:
    """Convert a pretrained LLaMA (``"smollm2"`` or a folder) into a recursive model saved atomically
    in ``out`` (a new or empty folder: nothing of the user's is replaced) with the source's tokenizer:
    what ``depthmux lm convert`` does."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        what = "a file" if not out.is_dir() else "a folder that is not empty"
        raise DepthmuxError(f"--out {out} is {what}: choose a new folder for the converted model")
    spec = LMModelSpec(
        from_pretrained=source, convert=True, recursions=recursions, sharing=sharing, init=init, lora_rank=lora_rank
    ).validate()
    check_writable_parent("--out", out)  # the model is written next to it first, then renamed
    model = build_lm_model(spec)
    tokenizer = load_saved_tokenizer(pretrained_model_dir(source))
    with atomic_directory(out) as tmp:
        model.save_pretrained(str(tmp))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
    return model, out
