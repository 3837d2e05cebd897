"""The shallow-deep early-exit decoder (FREE, SPEC 2) on depthmux's LLaMA decoder.

:class:`EarlyExitForCausalLM` is a :class:`~depthmux.recursion.RecursiveForCausalLM` with
``sharing="none"`` (exactly a LLaMA: :func:`from_llama` copies SmolLM2 losslessly) whose first
``exit_layer`` = L_s layers, followed by the SAME final norm and LM head, form the shallow model.
It adds no parameters, except with ``config.exit_confidence == "head"``: then ``model.exit_head``
(:class:`~depthmux.early_exit.ExitConfidenceHead`, d + 1 parameters) scores the shallow exit
(``model.head_confidence(h_s)``), so the engine decides an exit without the LM head (issue 19 point 3).
Its stages (the early-exit decoders in :mod:`depthmux.early_exit.decoding` call them;
``ctx`` is a :class:`~depthmux.recursion.TokenContext` from ``model.model.make_context``)::

    x   = model.model.embed(input_ids)        # [B, T, d]
    h_s = model.shallow(x, ctx)               # layers 0 .. L_s-1, raw residual stream [B, T, d]
    h_d = model.deep(h_s, ctx)                # layers L_s .. L-1 [B, T, d]
    model.exit_logits(h_s), model.exit_logits(h_d)   # final norm + LM head -> [B, T, V]

Training loss (SPEC 2), with ``hs = norm(h_s)``, ``hd = norm(h_d)`` the states the shared head reads::

    loss = (L_s * CE_shallow + L * CE_deep) / (L_s + L) + alpha * MSE(hs, hd.detach())

SPEC 2 does not say whether the deep state is a fixed target; here it is: ``hd`` is detached, so
the MSE pulls the shallow exit toward the deep states and the deep layers are trained by the
cross-entropies only. The MSE is averaged over the positions that have a next-token target.
``lm_loss`` is CE_deep (the deep model is the LM that ``depthmux lm eval`` measures);
``aux_losses`` holds the unweighted ``ce_shallow``, ``ce_deep`` and ``mse``; ``router_stats``
holds ``exit_agreement`` (share of positions where the shallow and deep argmax agree) and
``exit_confidence`` (mean p_top1 - p_top2 of the shallow exit), so the generic loop
(:func:`depthmux.training.lm.train_lm`) trains and logs it unchanged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from depthmux.early_exit.config import EarlyExitConfig, check_exit_layer
from depthmux.early_exit.head import ExitConfidenceHead
from depthmux.errors import DepthmuxError
from depthmux.recursion import (
    RecursiveCache,
    RecursiveCausalLMOutput,
    RecursiveForCausalLM,
    TokenContext,
    convert_llama_to_recursive,
)
from depthmux.utils.checks import check_model_folder

IGNORE_INDEX = -100


@dataclass
class EarlyExitCausalLMOutput(RecursiveCausalLMOutput):
    """:class:`~depthmux.recursion.RecursiveCausalLMOutput` plus ``shallow_logits`` [B, T, V] (the shallow
    exit's logits; computed with labels or ``return_shallow=True``, else None). ``logits`` are the deep ones."""

    shallow_logits: torch.Tensor | None = None


def top2_margin(logits: torch.Tensor) -> torch.Tensor:
    """FREE's confidence (SPEC 2): ``p_top1 - p_top2`` of ``softmax(logits)``. [..., V] -> [...], in [0, 1]."""
    top = logits.float().softmax(-1).topk(2, dim=-1).values
    return top[..., 0] - top[..., 1]


class EarlyExitForCausalLM(RecursiveForCausalLM):
    """A LLaMA decoder with a shallow exit after ``config.exit_layer`` layers (module docstring, SPEC 2).

    ``forward(input_ids, attention_mask=None, position_ids=None, labels=None, past_key_values=None,
    use_cache=None, routing=None, return_shallow=False)`` -> :class:`EarlyExitCausalLMOutput`
    (``routing`` is accepted for the causal-LM protocol and ignored: there is no router).
    """

    config_class = EarlyExitConfig
    config: EarlyExitConfig

    def __init__(self, config: EarlyExitConfig):
        super().__init__(config)
        self.exit_head: ExitConfidenceHead | None = None
        if config.exit_confidence == "head":
            self.exit_head = ExitConfidenceHead(config.hidden_size)

    # -- the learned exit confidence (CALM's early-exit classifier) ---------------------------
    @property
    def has_exit_head(self) -> bool:
        """Whether the model decides exits with its learned head (``config.exit_confidence == "head"``)."""
        return self.exit_head is not None

    def attach_exit_head(self) -> ExitConfidenceHead:
        """Give the model a (new, untrained) confidence head and set ``config.exit_confidence = "head"``;
        an existing head is replaced. Returns the head (on the model's device, float32)."""
        self.exit_head = ExitConfidenceHead(self.config.hidden_size).to(self.lm_head.weight.device)
        self.config.exit_confidence = "head"
        return self.exit_head

    def head_confidence(self, h_shallow: torch.Tensor) -> torch.Tensor:
        """The learned exit confidence of raw shallow states: ``exit_head(norm(h_s))``. [..., d] -> [...]
        in [0, 1]. No LM head is computed."""
        if self.exit_head is None:
            raise DepthmuxError(
                "this early-exit model has no confidence head (exit_confidence 'margin'): train one with "
                "'depthmux ee train-head'"
            )
        return self.exit_head(self.model.norm(h_shallow))

    # -- stages ----------------------------------------------------------------------------
    @property
    def exit_layer(self) -> int:
        """L_s."""
        return self.config.exit_layer

    @property
    def num_layers(self) -> int:
        """L."""
        return self.config.num_hidden_layers

    def run_layers(self, x: torch.Tensor, ctx: TokenContext, start: int, stop: int) -> torch.Tensor:
        """Layers ``start .. stop-1`` on every token of ``ctx`` (reading and extending its cache).
        [B, T, d] -> [B, T, d]."""
        for p in range(start, stop):
            x = self.model.layers[p](x, ctx.layer(p))
        return x

    def shallow(self, x: torch.Tensor, ctx: TokenContext) -> torch.Tensor:
        """Layers 0 .. L_s-1 on the embeddings ``x`` [B, T, d]: the shallow exit's raw state h_s [B, T, d]."""
        return self.run_layers(x, ctx, 0, self.exit_layer)

    def deep(self, h_shallow: torch.Tensor, ctx: TokenContext) -> torch.Tensor:
        """Layers L_s .. L-1 on h_s [B, T, d] (tokens at their own positions/slots): h_d [B, T, d]."""
        return self.run_layers(h_shallow, ctx, self.exit_layer, self.num_layers)

    def exit_logits(self, h: torch.Tensor) -> torch.Tensor:
        """The shared final norm and LM head on a raw state (either exit): [B, T, d] -> [B, T, V]."""
        return self.logits(self.model.norm(h))

    # -- forward ---------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        past_key_values: RecursiveCache | None = None,
        use_cache: bool | None = None,
        routing: str | None = None,
        cache: RecursiveCache | None = None,
        return_shallow: bool = False,
        **kwargs,
    ) -> EarlyExitCausalLMOutput:
        """Args: as :meth:`RecursiveForCausalLM.forward`; ``return_shallow``: also compute the shallow
        logits without labels. Returns: :class:`EarlyExitCausalLMOutput` (``logits`` [B, T, V] deep)."""
        if cache is None:
            cache = past_key_values
        if cache is not None and not isinstance(cache, RecursiveCache):
            raise DepthmuxError(f"EarlyExitForCausalLM needs a RecursiveCache, got {type(cache).__name__}")
        if routing not in (None, "topk", "causal"):
            raise DepthmuxError(f"routing must be 'topk' or 'causal', got {routing!r}")
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and cache is None:
            cache = RecursiveCache()
        ctx = self.model.make_context(input_ids, attention_mask, position_ids, cache)
        h_s = self.shallow(self.model.embed(input_ids), ctx)
        h_d = self.deep(h_s, ctx)
        hd = self.model.norm(h_d)
        logits = self.logits(hd)
        shallow_logits = loss = lm_loss = None
        aux: dict[str, torch.Tensor] = {}
        stats: dict[str, Any] = {}
        if labels is not None or return_shallow:
            hs = self.model.norm(h_s)
            shallow_logits = self.logits(hs)
            valid = ctx.write
            with torch.no_grad():
                agree = (shallow_logits.argmax(-1) == logits.argmax(-1)) & valid
                n = valid.sum().clamp(min=1)
                stats = {
                    "exit_agreement": agree.sum() / n,
                    "exit_confidence": (top2_margin(shallow_logits) * valid).sum() / n,
                }
        if labels is not None:
            labels = labels.to(logits.device)
            target = labels[:, 1:]
            ce_deep = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), target.flatten(), ignore_index=IGNORE_INDEX)
            ce_shallow = F.cross_entropy(
                shallow_logits[:, :-1].flatten(0, 1).float(), target.flatten(), ignore_index=IGNORE_INDEX
            )
            has_target = (target != IGNORE_INDEX).float()  # [B, T-1]
            sq = (hs[:, :-1].float() - hd[:, :-1].detach().float()).pow(2).mean(-1)
            mse = (sq * has_target).sum() / has_target.sum().clamp(min=1)
            Ls, L = self.exit_layer, self.num_layers
            loss = (Ls * ce_shallow + L * ce_deep) / (Ls + L) + self.config.exit_mse_weight * mse
            lm_loss = ce_deep
            aux = {"ce_shallow": ce_shallow, "ce_deep": ce_deep, "mse": mse}
        return EarlyExitCausalLMOutput(
            loss=loss,
            lm_loss=lm_loss,
            logits=logits,
            cache=cache if use_cache else None,
            aux_losses=aux,
            router_stats=stats,
            shallow_logits=shallow_logits,
        )


@dataclass
class ShallowExitOutput:
    """:class:`~depthmux.lm.protocol.CausalLMOutput` of :class:`ShallowExit` (no aux losses, no stats)."""

    loss: torch.Tensor | None
    lm_loss: torch.Tensor | None
    logits: torch.Tensor
    aux_losses: dict[str, torch.Tensor]
    router_stats: dict[str, Any]


class ShallowExit(nn.Module):
    """The shallow model of an :class:`EarlyExitForCausalLM` as a causal LM of its own: layers
    0 .. L_s-1, the shared final norm and LM head (SPEC 2). Holds no weights of its own; evaluating it
    with the generic held-out evaluation gives the shallow exit's NLL, and its forward declares only
    the shallow model's FLOPs. ``save_pretrained`` saves the whole early-exit model it views.
    """

    def __init__(self, model: EarlyExitForCausalLM) -> None:
        super().__init__()
        self.model = require_early_exit(model)

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        routing: str | None = None,
        use_cache: bool = False,
    ) -> ShallowExitOutput:
        """input_ids / position_ids / labels [B, T] -> shallow logits [B, T, V] (labels shifted inside)."""
        if routing not in (None, "topk", "causal"):
            raise DepthmuxError(f"routing must be 'topk' or 'causal', got {routing!r}")
        m = self.model
        ctx = m.model.make_context(input_ids, None, position_ids, RecursiveCache())
        logits = m.exit_logits(m.shallow(m.model.embed(input_ids), ctx))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(),
                labels[:, 1:].flatten().to(logits.device),
                ignore_index=IGNORE_INDEX,
            )
        return ShallowExitOutput(loss=loss, lm_loss=loss, logits=logits, aux_losses={}, router_stats={})

    def parameter_counts(self) -> dict[str, int]:
        """Parameters the shallow model uses: embeddings (+ an untied head), L_s layers, the final norm."""
        m = self.model
        used = [m.model.embed_tokens.weight, m.lm_head.weight, *m.model.norm.parameters()]
        used += [p for layer in m.model.layers[: m.exit_layer] for p in layer.parameters()]
        total = sum(p.numel() for p in {id(p): p for p in used}.values())
        embedding = m.parameter_counts()["embedding"]
        return {"total": total, "embedding": embedding, "non_embedding": total - embedding}

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        self.model.save_pretrained(save_directory, **kwargs)


# ---------------------------------------------------------------------------------------------
# building and loading


def _source_num_layers(source: Any) -> int:
    if isinstance(source, nn.Module):
        return int(source.config.num_hidden_layers)
    path = Path(source)
    layers = check_model_folder(path).get("num_hidden_layers")
    if not isinstance(layers, int):
        raise DepthmuxError(f"{path / 'config.json'} has no integer num_hidden_layers")
    return layers


def from_llama(source: Any, exit_layer: int, exit_mse_weight: float = 0.5) -> EarlyExitForCausalLM:
    """An :class:`EarlyExitForCausalLM` with the weights of a pretrained LLaMA-family model (exact copy).

    Args:
        source: ``"smollm2"`` (the packaged SmolLM2-135M, :func:`depthmux.assets.smollm2_path`), a
            local LLaMA model folder, or a loaded ``LlamaForCausalLM``.
        exit_layer: L_s (1 <= L_s <= L - 1), checked before the weights are read.
        exit_mse_weight: alpha of the FREE loss.
    Returns: the model in float32, eval mode; the deep exit equals the source model.
    """
    if isinstance(source, str) and source == "smollm2":
        from depthmux.assets import smollm2_path

        source = smollm2_path()
    check_exit_layer(exit_layer, _source_num_layers(source))
    vanilla = convert_llama_to_recursive(source, num_recursions=1, sharing="none")
    fields = {
        k: v
        for k, v in vanilla.config.to_dict().items()
        if k not in ("model_type", "architectures", "transformers_version", "auto_map")
    }
    config = EarlyExitConfig(exit_layer=exit_layer, exit_mse_weight=exit_mse_weight, **fields)
    from transformers.initialization import no_init_weights

    with no_init_weights():  # every tensor is loaded below
        model = EarlyExitForCausalLM(config)
    model.load_state_dict(vanilla.state_dict())
    if config.tie_word_embeddings:
        model.tie_weights()
    return model.eval()


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def load_early_exit_model(path: str | os.PathLike, **kwargs) -> EarlyExitForCausalLM:
    """``EarlyExitForCausalLM.from_pretrained(path)`` with one-line :class:`DepthmuxError` on bad folders,
    including a model saved without a shallow exit (any other ``model_type``)."""
    path = Path(path)
    model_type = check_model_folder(path).get("model_type")
    if model_type != EarlyExitConfig.model_type:
        raise DepthmuxError(
            f"{path} holds a {model_type!r} model without an early-exit head: train one with "
            f"'depthmux ee train' (model type {EarlyExitConfig.model_type!r})"
        )
    try:
        return EarlyExitForCausalLM.from_pretrained(path, **kwargs)
    except DepthmuxError:
        raise
    except Exception as e:  # transformers raises many types for bad folders
        raise DepthmuxError(f"cannot load early-exit model from {path}: {_one_line(e)}") from None


def require_early_exit(model: Any) -> EarlyExitForCausalLM:
    """``model`` if it has a shallow exit (an :class:`EarlyExitForCausalLM`), else a one-line error."""
    if isinstance(model, EarlyExitForCausalLM):
        return model
    kind = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    raise DepthmuxError(
        f"early-exit decoding needs a model with a shallow exit (model type "
        f"{EarlyExitConfig.model_type!r}), got {kind!r}: train one with 'depthmux ee train'"
    )
