"""Turn a pretrained LLaMA-family model into a (relaxed) recursive one (SPEC 3), and load checkpoints.

``convert_llama_to_recursive(model_or_path, num_recursions, sharing, init, relaxation_rank)``:

* The effective depth stays L (the original's ``num_hidden_layers``); effective position p plays
  the role of original layer p. Positions tied together (``config.layer_schedule()``) share one
  unique layer, initialised by
  - ``"stepwise"``: K evenly spaced original layers of the shared range, first and last included
    (``i * (n - 1) / (K - 1)`` rounded half up for i = 0..K-1 over the n layers of the range, as
    the public code: :func:`stepwise_indices`);
  - ``"average"``: the mean of the original layers tied to it;
  - ``"lower"``: the first K layers of the shared range.
  For middle_* sharing the first and last original layers are copied as the unique layers.
* RMSNorm gains of the shared layers are folded into the linear maps they feed
  (``W diag(g)``, exact) and the shared norms set to 1, so no per-layer information is lost to
  tying a norm.
* Relaxation (``relaxation_rank`` r > 0): for each tied position (loop i) and each linear,
  ``B_i A_i`` = rank-r truncated SVD of ``W_layer - W_shared`` (exact, :func:`svd_lora`) with
  scaling 1; at full rank (r >= min(in, out)) the converted model reproduces the original exactly (float error).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from depthmux.errors import DepthmuxError
from depthmux.recursion.config import RecursiveConfig
from depthmux.recursion.modeling import RecursiveForCausalLM
from depthmux.utils.checks import check_model_folder

INIT_METHODS = ("stepwise", "average", "lower")
EXACT_SVD_MAX_DIM = 4096  # exact truncated SVD up to this min(out, in)
_ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
_MLP = ("gate_proj", "up_proj", "down_proj")


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def _check_convertible(model_type: Any, hidden_size: Any, relaxation_rank: int) -> None:
    """One-line :class:`DepthmuxError` unless a source with this config can be converted with this LoRA rank."""
    if model_type != "llama":
        raise DepthmuxError(f"only LLaMA models (model_type 'llama') can be converted, got {model_type!r}")
    if isinstance(hidden_size, int) and relaxation_rank > hidden_size:
        raise DepthmuxError(
            f"--lora-rank {relaxation_rank} is above the model's hidden size {hidden_size} "
            f"(full rank is at most {hidden_size})"
        )


def _load_llama(model_or_path: Any, relaxation_rank: int = 0):
    """A LlamaForCausalLM (float32) from a model object or a local folder; a folder's config is checked
    (:func:`_check_convertible`) before transformers loads (and prints about) anything."""
    if isinstance(model_or_path, torch.nn.Module):
        return model_or_path
    path = Path(model_or_path)
    cfg = check_model_folder(path)
    _check_convertible(cfg.get("model_type"), cfg.get("hidden_size"), relaxation_rank)
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    except Exception as e:  # transformers raises many types for bad folders
        raise DepthmuxError(f"cannot load a causal LM from {path}: {_one_line(e)}") from None


def recursive_config_from_llama(
    llama_config, num_recursions: int = 1, sharing: str = "none", relaxation_rank: int = 0, **overrides
) -> RecursiveConfig:
    """A :class:`RecursiveConfig` with the shapes of a ``LlamaConfig`` (same L, d, heads, vocab, RoPE).

    Only ``model_type == "llama"`` configs are accepted (every field read here exists on them); a
    non-default RoPE, biases or an activation other than SiLU raise a one-line :class:`DepthmuxError`.
    """
    c = llama_config
    _check_convertible(c.model_type, getattr(c, "hidden_size", None), relaxation_rank)
    rope = c.rope_parameters or {}
    rope_type = rope.get("rope_type", "default")
    if rope_type != "default":
        raise DepthmuxError(f"unsupported RoPE type {rope_type!r} (only the default LLaMA RoPE is implemented)")
    if c.attention_bias or c.mlp_bias:
        raise DepthmuxError("models with attention or MLP biases are not supported")
    if c.hidden_act != "silu":
        raise DepthmuxError(f"unsupported activation {c.hidden_act!r} (SwiGLU with silu only)")
    kw = dict(
        vocab_size=c.vocab_size,
        hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads,
        head_dim=c.head_dim,
        rms_norm_eps=c.rms_norm_eps,
        rope_theta=float(rope.get("rope_theta", 10000.0)),
        max_position_embeddings=c.max_position_embeddings,
        initializer_range=c.initializer_range,
        tie_word_embeddings=bool(c.tie_word_embeddings),
        bos_token_id=c.bos_token_id,
        eos_token_id=c.eos_token_id,
        pad_token_id=c.pad_token_id,
        num_recursions=num_recursions,
        sharing=sharing,
        relaxation_rank=relaxation_rank,
    )
    kw.update(overrides)
    return RecursiveConfig(**kw)


def _layer_weights(sd: dict[str, torch.Tensor], i: int) -> dict[str, torch.Tensor]:
    p = f"model.layers.{i}."
    out = {}
    for name in _ATTN:
        out[name] = sd[p + f"self_attn.{name}.weight"].float()
    for name in _MLP:
        out[name] = sd[p + f"mlp.{name}.weight"].float()
    out["input_layernorm"] = sd[p + "input_layernorm.weight"].float()
    out["post_attention_layernorm"] = sd[p + "post_attention_layernorm.weight"].float()
    return out


def _fold_norms(w: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fold RMSNorm gains into the following linears (exact): ``W diag(g)``; gains become 1."""
    w = dict(w)
    g1, g2 = w["input_layernorm"], w["post_attention_layernorm"]
    for name in ("q_proj", "k_proj", "v_proj"):
        w[name] = w[name] * g1[None, :]
    for name in ("gate_proj", "up_proj"):
        w[name] = w[name] * g2[None, :]
    w["input_layernorm"] = torch.ones_like(g1)
    w["post_attention_layernorm"] = torch.ones_like(g2)
    return w


def stepwise_indices(n: int, k: int) -> list[int]:
    """Stepwise init (SPEC 3): which of ``n`` tied layers seed the ``k`` shared ones, first and last kept.

    ``i * (n - 1) / (k - 1)`` rounded half up, as the public code (not Python's banker's ``round``):
    n = 6, k = 3 gives [0, 3, 5] (2.5 -> 3), i.e. layers [1, 4, 6] of an L = 8 model with middle sharing.
    """
    if k == 1:
        return [0]
    return [(2 * i * (n - 1) + (k - 1)) // (2 * (k - 1)) for i in range(k)]


def _copy_layer(layer, w: dict[str, torch.Tensor]) -> None:
    for name in _ATTN:
        getattr(layer.self_attn, name).weight.copy_(w[name])
    for name in _MLP:
        getattr(layer.mlp, name).weight.copy_(w[name])
    layer.input_layernorm.weight.copy_(w["input_layernorm"])
    layer.post_attention_layernorm.weight.copy_(w["post_attention_layernorm"])


def svd_lora(residual: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A [r, in], B [out, r])`` with ``B @ A`` the best rank-r approximation of ``residual`` [out, in].

    Exact truncated SVD (``torch.linalg.svd``) whenever ``min(out, in) <= EXACT_SVD_MAX_DIM`` (every
    SmolLM2 matrix); a seeded randomized SVD only beyond that, where the exact one is too slow.
    The singular values are split evenly (``sqrt(S)`` into each factor), scaling 1 (SPEC 3).
    """
    residual = residual.float()
    if min(residual.shape) > EXACT_SVD_MAX_DIM and rank + 16 < min(residual.shape) // 2:
        # randomized truncated SVD (Halko et al.), seeded: same result every call
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            U, S, V = torch.svd_lowrank(residual, q=rank + 16, niter=4)
        Vh = V.T
    else:
        U, S, Vh = torch.linalg.svd(residual, full_matrices=False)
    r = min(rank, S.shape[0])
    A = torch.zeros(rank, residual.shape[1])
    B = torch.zeros(residual.shape[0], rank)
    root = S[:r].sqrt()
    A[:r] = root[:, None] * Vh[:r]
    B[:, :r] = U[:, :r] * root[None, :]
    return A, B


def recursive_from_llama_state_dict(
    state_dict: dict[str, torch.Tensor], config: RecursiveConfig, init: str = "stepwise"
) -> RecursiveForCausalLM:
    """Build a :class:`RecursiveForCausalLM` for ``config`` from a LLaMA ``state_dict``.

    ``config.num_hidden_layers`` must equal the number of layers in ``state_dict``. With
    ``sharing="none"`` this is a plain copy (the vanilla model equals ``LlamaForCausalLM``).
    """
    if init not in INIT_METHODS:
        raise DepthmuxError(f"unknown init {init!r}; choose one of {', '.join(INIT_METHODS)}")
    L = config.num_hidden_layers
    n_src = len({k.split(".")[2] for k in state_dict if k.startswith("model.layers.")})
    if n_src != L:
        raise DepthmuxError(f"the source model has {n_src} layers but the config asks for {L}")
    from transformers.initialization import no_init_weights

    with no_init_weights():  # every tensor is overwritten below (LoRA zeroed when unused)
        model = RecursiveForCausalLM(config)
    if model.model.router is not None:  # the only tensors not copied from the source
        for module in model.model.router.modules():
            model._init_weights(module)
    if config.tie_word_embeddings:
        model.tie_weights()
    orig = [_layer_weights(state_dict, i) for i in range(L)]
    schedule = config.layer_schedule()
    pre, K = config.num_prefix_layers, config.block_size
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(state_dict["model.embed_tokens.weight"].float())
        model.model.norm.weight.copy_(state_dict["model.norm.weight"].float())
        if not config.tie_word_embeddings:
            head = state_dict.get("lm_head.weight", state_dict["model.embed_tokens.weight"])
            model.lm_head.weight.copy_(head.float())
        if config.sharing == "none":
            for p in range(L):
                _copy_layer(model.model.layers[p], orig[p])
            return model
        if pre:
            _copy_layer(model.model.layers[0], orig[0])
            _copy_layer(model.model.layers[pre + K], orig[L - 1])
        shared_positions = [p for p, (_, loop) in enumerate(schedule) if loop >= 0]
        folded = {p: _fold_norms(orig[p]) for p in shared_positions}
        shared: dict[int, dict[str, torch.Tensor]] = {}
        for u in range(pre, pre + K):
            tied = [p for p in shared_positions if schedule[p][0] == u]
            if init == "average":
                shared[u] = {name: torch.stack([folded[p][name] for p in tied]).mean(0) for name in folded[tied[0]]}
            elif init == "lower":
                shared[u] = folded[shared_positions[u - pre]]
            else:
                picks = stepwise_indices(len(shared_positions), K)
                shared[u] = folded[shared_positions[picks[u - pre]]]
            _copy_layer(model.model.layers[u], shared[u])
        if config.relaxation_rank > 0:
            for p in shared_positions:
                u, loop = schedule[p]
                layer = model.model.layers[u]
                for name in _ATTN + _MLP:
                    lin = getattr(layer.self_attn if name in _ATTN else layer.mlp, name)
                    A, B = svd_lora(folded[p][name] - shared[u][name], config.relaxation_rank)
                    lin.lora_A[loop].copy_(A)
                    lin.lora_B[loop].copy_(B)
    return model


def convert_llama_to_recursive(
    model_or_path: Any,
    num_recursions: int,
    sharing: str = "cycle",
    init: str = "stepwise",
    relaxation_rank: int = 0,
    **config_overrides,
) -> RecursiveForCausalLM:
    """Convert a pretrained LLaMA-family causal LM into a :class:`RecursiveForCausalLM` (SPEC 3).

    Args:
        model_or_path: a ``LlamaForCausalLM`` (or compatible) or a local folder, e.g.
            ``depthmux.assets.smollm2_path()``.
        num_recursions: N_r loops of the shared block.
        sharing: "cycle", "sequence", "middle_cycle", "middle_sequence" or "none".
        init: "stepwise", "average" or "lower".
        relaxation_rank: per-loop LoRA rank r (0 = none), SVD-initialised (scaling 1).
        **config_overrides: extra :class:`RecursiveConfig` fields (e.g. ``mor_router="expert"``).
    Returns: the recursive model in float32, eval mode.
    """
    src = _load_llama(model_or_path, relaxation_rank)
    cfg = recursive_config_from_llama(
        src.config, num_recursions=num_recursions, sharing=sharing, relaxation_rank=relaxation_rank, **config_overrides
    )
    sd = {k: v.detach().cpu() for k, v in src.state_dict().items()}
    if "lm_head.weight" not in sd and not cfg.tie_word_embeddings:
        raise DepthmuxError("the source model has no lm_head.weight and untied embeddings")
    model = recursive_from_llama_state_dict(sd, cfg, init=init)
    return model.eval()


def load_recursive_model(path: str | os.PathLike, **kwargs) -> RecursiveForCausalLM:
    """``RecursiveForCausalLM.from_pretrained(path)`` with one-line :class:`DepthmuxError` on bad folders."""
    path = Path(path)
    model_type = check_model_folder(path).get("model_type")
    if model_type != RecursiveConfig.model_type:
        raise DepthmuxError(f"{path} holds a {model_type!r} model, not {RecursiveConfig.model_type!r}")
    try:
        return RecursiveForCausalLM.from_pretrained(path, **kwargs)
    except DepthmuxError:
        raise
    except Exception as e:
        raise DepthmuxError(f"cannot load recursive model from {path}: {_one_line(e)}") from None
