"""Recursive, relaxed-recursive and Mixture-of-Recursions LLaMA-style decoders (SPEC 3, SPEC 4).

A readable, nanoGPT-sized implementation with Hugging Face conventions:
``RecursiveForCausalLM(config)`` is a ``PreTrainedModel`` + ``GenerationMixin`` so
``save_pretrained`` / ``from_pretrained`` / ``generate`` work.

Pieces, bottom-up:

* :class:`RMSNorm`, rotary embeddings (:func:`rope_cos_sin`, :func:`apply_rope`), SwiGLU MLP.
* :class:`RelaxedLinear`: a linear layer shared by N_r loops with an optional per-loop LoRA
  ``W x + B_i A_i x`` (scaling 1, SPEC 3).
* :class:`DecoderLayer`: pre-norm attention (GQA) + MLP. Attention keys always come from a
  :class:`~depthmux.recursion.kv_cache.LayerKV` (a temporary one when no cache is kept), so the
  same code serves training, prefill, recursion-wise MoR (only routed tokens write and read) and
  recursive KV sharing (later recursions read the first recursion's keys).
* :class:`RecursiveModel`: embeddings, unique layers, routers, final norm, and the schedule.
* :class:`RecursiveForCausalLM`: LM head, losses, outputs.

Masks: a query at absolute slot s in document segment g sees the cached keys with slot <= s in the
same segment. Segments come from ``position_ids`` restarting at 0 (packed documents:
``seg = cumsum(position_ids == 0)`` per row), so attention never crosses a document boundary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as hf_init
from transformers.modeling_outputs import ModelOutput

from depthmux.recursion.config import RecursiveConfig
from depthmux.recursion.kv_cache import LayerKV, RecursiveCache
from depthmux.recursion.routers import (
    ExpertChoiceRouter,
    TokenChoiceRouter,
    balance_loss,
    capacity_k,
    causal_select,
    router_bce,
    topk_select,
    z_loss,
)

# ---------------------------------------------------------------------------------------------
# building blocks


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x^2) + eps) * weight``, computed in float32. [..., d] -> [..., d]."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(dtype)


def rope_cos_sin(position_ids: torch.Tensor, head_dim: int, theta: float,
                 dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary tables for ``position_ids`` [B, T]: cos, sin [B, T, head_dim] (LLaMA half-split layout)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=position_ids.device, dtype=torch.float32) / head_dim))
    freqs = position_ids.float()[..., None] * inv_freq  # [B, T, D/2]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` [B, H, T, D] by position: ``x*cos + rotate_half(x)*sin``."""
    half = x.shape[-1] // 2
    rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos[:, None] + rot * sin[:, None]


class RelaxedLinear(nn.Module):
    """Linear map shared by ``num_loops`` loop positions, with an optional per-loop LoRA (SPEC 3).

    ``y = x W^T + (x A_i^T) B_i^T`` for loop i (scaling exactly 1, so a rank-full SVD init of
    ``W_layer - W_shared`` reproduces the original layer). ``loop = -1`` or rank 0: plain linear.

    Parameters: ``weight`` [out, in]; ``lora_A`` [num_loops, r, in]; ``lora_B`` [num_loops, out, r].
    """

    def __init__(self, in_features: int, out_features: int, num_loops: int = 1, rank: int = 0):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        if rank > 0:
            self.lora_A = nn.Parameter(torch.zeros(num_loops, rank, in_features))
            self.lora_B = nn.Parameter(torch.zeros(num_loops, out_features, rank))
        else:
            self.lora_A = self.lora_B = None

    def forward(self, x: torch.Tensor, loop: int = -1) -> torch.Tensor:
        y = F.linear(x, self.weight)
        if self.lora_A is not None and loop >= 0:
            y = y + F.linear(F.linear(x, self.lora_A[loop]), self.lora_B[loop])
        return y

    def effective_weight(self, loop: int = -1) -> torch.Tensor:
        """The dense weight used at ``loop``: ``W + B_i A_i`` [out, in]."""
        if self.lora_A is None or loop < 0:
            return self.weight
        return self.weight + self.lora_B[loop] @ self.lora_A[loop]

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, lora_rank={self.rank}"


class Attention(nn.Module):
    """Multi-head attention with grouped KV heads (GQA) and RoPE."""

    def __init__(self, config: RecursiveConfig, num_loops: int, rank: int):
        super().__init__()
        d, H, Hk, D = config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = H, Hk, D
        self.q_proj = RelaxedLinear(d, H * D, num_loops, rank)
        self.k_proj = RelaxedLinear(d, Hk * D, num_loops, rank)
        self.v_proj = RelaxedLinear(d, Hk * D, num_loops, rank)
        self.o_proj = RelaxedLinear(H * D, d, num_loops, rank)

    def forward(self, h: torch.Tensor, loop: int, cos: torch.Tensor, sin: torch.Tensor, q_slot: torch.Tensor,
                q_seg: torch.Tensor, write: torch.Tensor, kv: LayerKV, seg_all: torch.Tensor,
                read_only: bool = False) -> torch.Tensor:
        """Attention of the queries in ``h`` over the keys held by ``kv``.

        Args:
            h: [B, T, d] normed hidden states of the tokens processed here.
            cos, sin: [B, T, D] rotary tables of their positions.
            q_slot, q_seg: [B, T] absolute slots and document segments of the queries.
            write: [B, T] bool, tokens whose K/V are appended to ``kv`` (ignored if ``read_only``).
            kv: the layer position's cache; ``read_only`` reuses it without writing (KV sharing).
            seg_all: [B, S] segment of every slot (to place cached keys in their documents).
        Returns: [B, T, d].
        """
        B, T, _ = h.shape
        q = self.q_proj(h, loop).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        q = apply_rope(q, cos, sin)
        if not read_only:
            k = self.k_proj(h, loop).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
            v = self.v_proj(h, loop).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
            kv.append(apply_rope(k, cos, sin), v, q_slot, write)
        K, V, k_slot = kv.view()
        k_seg = seg_all.gather(1, k_slot.clamp(min=0))
        allowed = ((k_slot[:, None, :] >= 0) & (k_slot[:, None, :] <= q_slot[:, :, None])
                   & (k_seg[:, None, :] == q_seg[:, :, None]))
        # padding queries may see nothing: let them see everything (their outputs are discarded)
        allowed = allowed | ~allowed.any(-1, keepdim=True)
        rep = self.num_heads // self.num_kv_heads
        if rep > 1:
            K, V = K.repeat_interleave(rep, dim=1), V.repeat_interleave(rep, dim=1)
        out = F.scaled_dot_product_attention(q, K.to(q.dtype), V.to(q.dtype), attn_mask=allowed[:, None])
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1), loop)


class MLP(nn.Module):
    """SwiGLU: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, config: RecursiveConfig, num_loops: int, rank: int):
        super().__init__()
        d, I = config.hidden_size, config.intermediate_size
        self.gate_proj = RelaxedLinear(d, I, num_loops, rank)
        self.up_proj = RelaxedLinear(d, I, num_loops, rank)
        self.down_proj = RelaxedLinear(I, d, num_loops, rank)

    def forward(self, x: torch.Tensor, loop: int = -1) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x, loop)) * self.up_proj(x, loop), loop)


class DecoderLayer(nn.Module):
    """Pre-norm LLaMA block: ``x + attn(norm(x))`` then ``+ mlp(norm(.))``. [B, T, d] -> [B, T, d]."""

    def __init__(self, config: RecursiveConfig, num_loops: int = 1, rank: int = 0):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, num_loops, rank)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config, num_loops, rank)

    def forward(self, x: torch.Tensor, loop: int, ctx: "_Tokens", kv: LayerKV, read_only: bool = False) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), loop, ctx.cos, ctx.sin, ctx.slot, ctx.seg, ctx.write, kv,
                               ctx.seg_all, read_only)
        return x + self.mlp(self.post_attention_layernorm(x), loop)


@dataclass
class _Tokens:
    """The tokens one layer call processes (a subset of the chunk for MoR): all [B, T] / [B, T, D]."""

    slot: torch.Tensor
    seg: torch.Tensor
    write: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor
    seg_all: torch.Tensor


# ---------------------------------------------------------------------------------------------
# outputs


@dataclass
class RecursiveCausalLMOutput(ModelOutput):
    """Output of :meth:`RecursiveForCausalLM.forward`.

    Attributes:
        loss: ``lm_loss + sum(coef * aux)`` (None without labels).
        lm_loss: next-token cross-entropy (None without labels).
        logits: [B, T, V].
        cache: the :class:`RecursiveCache` (also as ``past_key_values``) when ``use_cache``.
        aux_losses: unweighted auxiliary losses by name ("router_bce", "balance", "z_loss");
            expert-choice ``router_bce`` is the sum over recursions of the mean BCE between the
            raw router logit and the (detached) top-k selection over that recursion's candidates.
        router_stats: ``tokens_per_recursion`` [N_r] (long, summed over the batch),
            ``selected`` [B, N_r, T] (bool, which tokens ran each recursion);
            expert-choice: ``causal_agreement`` [N_r] (fraction of candidates where
            ``sigmoid(logit) > 0.5`` equals the selection), ``capacity_k`` [B, N_r];
            token-choice: ``tokens_per_depth`` [N_r]. Tensors are detached.
    """

    loss: torch.Tensor | None = None
    lm_loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    cache: Any = None
    aux_losses: dict[str, torch.Tensor] | None = None
    router_stats: dict[str, Any] | None = None

    @property
    def past_key_values(self):
        return self.cache


# ---------------------------------------------------------------------------------------------
# models


class RecursivePreTrainedModel(PreTrainedModel):
    config_class = RecursiveConfig
    config: RecursiveConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = False
    _no_split_modules = ["DecoderLayer"]

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, RelaxedLinear):
            hf_init.normal_(module.weight, mean=0.0, std=std)
            if module.lora_A is not None:
                # delta starts at zero: A random, B zero (standard LoRA)
                hf_init.normal_(module.lora_A, mean=0.0, std=1.0 / math.sqrt(module.in_features))
                hf_init.zeros_(module.lora_B)
        elif isinstance(module, nn.Linear):
            hf_init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                hf_init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            hf_init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, RMSNorm):
            hf_init.ones_(module.weight)


class RecursiveModel(RecursivePreTrainedModel):
    """The decoder body: embeddings -> layer schedule (with optional MoR routing) -> final norm.

    ``layers`` holds the unique layers only: prefix (0 or 1), the shared block (K), suffix (0 or 1).
    A shared layer is one ``nn.Module`` reused at every loop position, so its parameters are one
    tensor each (SPEC 3).
    """

    def __init__(self, config: RecursiveConfig):
        super().__init__(config)
        n_loops = config.num_recursions
        rank = config.relaxation_rank
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        pre, K, suf = config.num_prefix_layers, config.block_size, config.num_suffix_layers
        shared = config.sharing != "none"
        layers = [DecoderLayer(config) for _ in range(pre)]
        layers += [DecoderLayer(config, n_loops, rank if shared else 0) for _ in range(K)]
        layers += [DecoderLayer(config) for _ in range(suf)]
        self.layers = nn.ModuleList(layers)
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        if config.mor_router == "expert":
            self.router = ExpertChoiceRouter(config.hidden_size, n_loops, bool(getattr(config, "mor_aux_router", False)))
        elif config.mor_router == "token":
            self.router = TokenChoiceRouter(config.hidden_size, n_loops)
        else:
            self.router = None
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.embed_tokens = value

    # -- helpers ---------------------------------------------------------------------------
    def _uses_recursion_loop(self) -> bool:
        """Cycle-shaped sharing runs as recursions of a block (needed for MoR and KV sharing)."""
        return self.config.sharing in ("cycle", "middle_cycle")

    def _tokens(self, slot, seg, write, pos, seg_all, dtype) -> _Tokens:
        cos, sin = rope_cos_sin(pos, self.config.head_dim, self.config.rope_theta, dtype)
        return _Tokens(slot=slot, seg=seg, write=write, cos=cos, sin=sin, seg_all=seg_all)

    def forward(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, cache: RecursiveCache | None = None,
                routing: str = "topk") -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, Any]]:
        """Run the body.

        Args:
            input_ids: [B, T] new tokens (the ones not yet in ``cache``).
            attention_mask: [B, T] or [B, S + T] (1 = real token); padding never enters the cache.
            position_ids: [B, T] RoPE positions; restarts at 0 mark packed documents. Default:
                running count of real tokens (left padding handled).
            cache: a :class:`RecursiveCache` to read and extend (a temporary one if None).
            routing: "topk" (training, non-causal) or "causal" (decoding rule), SPEC 4.
        Returns: hidden states [B, T, d] after the final norm, aux losses, router stats.
        """
        cfg = self.config
        B, T = input_ids.shape
        device = input_ids.device
        cache = cache if cache is not None else RecursiveCache()
        if attention_mask is None:
            valid = torch.ones(B, T, dtype=torch.bool, device=device)
        else:
            valid = attention_mask[:, -T:].to(torch.bool)
        past_valid = cache.num_valid if cache.num_valid is not None else torch.zeros(B, dtype=torch.long, device=device)
        last_seg = cache.last_seg if cache.last_seg is not None else torch.zeros(B, dtype=torch.long, device=device)
        if position_ids is None:
            pos = (past_valid[:, None] + valid.long().cumsum(1) - 1).clamp(min=0)
            seg = last_seg[:, None].expand(B, T).clone()
        else:
            pos = position_ids.to(device).long().expand(B, T)
            seg = last_seg[:, None] + (pos == 0).long().cumsum(1)
        slot = cache.extend(seg, valid)
        seg_all = cache.seg

        x = self.embed_tokens(input_ids)
        full = self._tokens(slot, seg, valid, pos, seg_all, x.dtype)
        aux: dict[str, torch.Tensor] = {}
        stats: dict[str, Any] = {}
        schedule = cfg.layer_schedule()
        pre = cfg.num_prefix_layers

        if not self._uses_recursion_loop():
            for p, (u, loop) in enumerate(schedule):
                x = self.layers[u](x, loop, full, cache.layer(p))
            return self.norm(x), aux, stats

        for p in range(pre):
            x = self.layers[p](x, -1, full, cache.layer(p))
        x = self._recursions(x, valid, pos, slot, seg, seg_all, cache, routing, aux, stats)
        for p in range(cfg.num_hidden_layers - cfg.num_suffix_layers, cfg.num_hidden_layers):
            u, _ = schedule[p]
            x = self.layers[u](x, -1, full, cache.layer(p))
        return self.norm(x), aux, stats

    def _run_block(self, h: torch.Tensor, r: int, toks: _Tokens, cache: RecursiveCache) -> torch.Tensor:
        """Apply the K shared layers once as recursion r (0-based) to ``h`` [B, M, d]."""
        cfg = self.config
        pre, K = cfg.num_prefix_layers, cfg.block_size
        share = cfg.mor_kv == "share_first" and r > 0
        for j in range(K):
            p = pre + (0 if share else r) * K + j
            h = self.layers[pre + j](h, r, toks, cache.layer(p), read_only=share)
        return h

    def _recursions(self, x, valid, pos, slot, seg, seg_all, cache, routing, aux, stats) -> torch.Tensor:
        """The recursion block applied N_r times, with MoR routing when configured (SPEC 4).

        x: [B, T, d] = H^1. Returns H^{N_r + 1} [B, T, d]. With f(H) = block(H) - H (the block's
        residual update):

        * no router: every token, ``H^{r+1} = block(H^r)``;
        * expert-choice: ``H^{r+1} = H^r + g * f(H^r)`` for the tokens selected at r (top-k of the
          candidates, or ``sigmoid(logit) > 0.5`` in causal routing; a recursion with capacity 1
          keeps all candidates), ``g = alpha * sigmoid(logit)``; others keep ``H^r``;
        * token-choice: a token with depth d runs recursions 1..d; the updates before its last are
          ungated (``H + f(H)``), the last is gated by ``g = alpha * p_d`` so the router gets a
          gradient from the LM loss.
        """
        cfg = self.config
        n = cfg.num_recursions
        B, T, _ = x.shape
        share_first = cfg.mor_kv == "share_first"
        tokens_per_rec, selected = [], []

        depth = gate_tc = None
        if cfg.mor_router == "token":
            logits = self.router(x)  # [B, T, N_r]
            probs = logits.softmax(-1)
            depth = probs.argmax(-1)  # [B, T] 0-based: recursions 0..depth are applied
            gate_tc = cfg.mor_alpha * probs.gather(-1, depth[..., None]).squeeze(-1)
            aux["balance"] = balance_loss(probs, depth, valid)
            aux["z_loss"] = z_loss(logits, valid, token_choice=True)
            stats["tokens_per_depth"] = torch.stack([((depth == i) & valid).sum() for i in range(n)]).detach()

        candidates = valid
        bce_terms, z_terms, agree, ks = [], [], [], []
        for r in range(n):
            gate = None
            if cfg.mor_router == "expert":
                logits = self.router(x, r)  # [B, T]
                # the logit the causal rule and the BCE use: the router's own (auxiliary loss) or
                # a separate router on detached states (auxiliary router, MoR paper)
                pred = self.router.aux_logits(x.detach(), r) if self.router.aux_routers is not None else logits
                if routing == "topk":
                    k = capacity_k(cfg.capacities()[r], valid.long().sum(1))
                    sel = topk_select(logits, candidates, k)
                else:
                    sel = causal_select(pred, candidates)
                if cfg.capacities()[r] >= 1.0 or (share_first and r == 0):
                    # capacity 1 keeps every candidate whatever the logits (as top-k does in
                    # training); recursive KV sharing needs every token at the first recursion
                    sel = candidates
                bce_terms.append(router_bce(pred, sel, candidates))
                z_terms.append(z_loss(logits, candidates, token_choice=False))
                with torch.no_grad():
                    c = candidates.sum().clamp(min=1)
                    agree.append((((pred > 0) == sel) & candidates).sum() / c)
                    ks.append(sel.long().sum(1))
                gate = cfg.mor_alpha * torch.sigmoid(logits)
                candidates = sel
            elif cfg.mor_router == "token":
                sel = valid & (depth >= r)
                gate = torch.where(depth == r, gate_tc, torch.ones_like(gate_tc))
            else:
                sel = valid
            tokens_per_rec.append(sel.sum().detach())
            selected.append(sel.detach())
            x = self._apply_selected(x, sel, gate, r, pos, slot, seg, seg_all, cache)

        stats["tokens_per_recursion"] = torch.stack(tokens_per_rec)
        stats["selected"] = torch.stack(selected, dim=1)  # [B, N_r, T]
        if cfg.mor_router == "expert":
            # summed over recursions, as in the public MoR code (a mean would divide the effective
            # coefficient by N_r)
            aux["router_bce"] = torch.stack(bce_terms).sum()
            aux["z_loss"] = torch.stack(z_terms).mean()
            stats["causal_agreement"] = torch.stack(agree)
            stats["capacity_k"] = torch.stack(ks, dim=1)
        return x

    def _apply_selected(self, x, sel, gate, r, pos, slot, seg, seg_all, cache) -> torch.Tensor:
        """``H <- H + gate * (block(H) - H)`` on the selected tokens only, others unchanged.

        Selected tokens are gathered into a compact [B, M, d] batch (M = most selected in a row),
        so attention at recursion r runs among the routed tokens only (recursion-wise KV) or over
        the first recursion's keys (recursive sharing).
        """
        B, T, d = x.shape
        counts = sel.long().sum(1)
        M = int(counts.max().item()) if B else 0
        if M == 0:
            return x
        if M == T and bool(sel.all()):
            idx = None
            h_in, ok = x, sel
            toks = self._tokens(slot, seg, sel, pos, seg_all, x.dtype)
        else:
            key = (~sel).long() * T + torch.arange(T, device=x.device)
            idx = key.argsort(dim=1)[:, :M]  # selected tokens first, in time order
            ok = torch.arange(M, device=x.device)[None, :] < counts[:, None]
            h_in = x.gather(1, idx[..., None].expand(B, M, d))
            toks = self._tokens(slot.gather(1, idx), seg.gather(1, idx), ok, pos.gather(1, idx), seg_all, x.dtype)
        h_out = self._run_block(h_in, r, toks, cache)
        delta = h_out - h_in
        if gate is not None:
            g = gate if idx is None else gate.gather(1, idx)
            delta = delta * g[..., None].to(delta.dtype)
        delta = delta * ok[..., None].to(delta.dtype)
        if idx is None:
            return x + delta
        return x.scatter_add(1, idx[..., None].expand(B, M, d), delta)


class RecursiveForCausalLM(RecursivePreTrainedModel, GenerationMixin):
    """Causal LM over :class:`RecursiveModel` (SPEC 3, SPEC 4).

    ``forward(input_ids, attention_mask=None, position_ids=None, labels=None,
    past_key_values=None, use_cache=None, routing=None)`` returns a
    :class:`RecursiveCausalLMOutput`. ``routing``: "topk" (default in training mode) or
    "causal" (default in eval mode when ``config.mor_causal_inference``); token-choice and non-MoR
    models ignore it.
    """

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: RecursiveConfig):
        super().__init__(config)
        self.model = RecursiveModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # we bring our own RecursiveCache (ragged, per recursion)

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.lm_head = value

    def default_routing(self) -> str:
        if not self.training and self.config.mor_causal_inference:
            return "causal"
        return "topk"

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
        **kwargs,
    ) -> RecursiveCausalLMOutput:
        """Args:
            input_ids: [B, T]; attention_mask: [B, T] or [B, S + T]; position_ids: [B, T];
            labels: [B, T] (shifted inside, -100 ignored); past_key_values / cache: a
            :class:`RecursiveCache`; use_cache: return the cache; routing: "topk" | "causal".
        Returns: :class:`RecursiveCausalLMOutput` (logits [B, T, V]).
        """
        if cache is None:
            cache = past_key_values
        if cache is not None and not isinstance(cache, RecursiveCache):
            if hasattr(cache, "get_seq_length") and cache.get_seq_length() == 0:
                cache = None  # an empty foreign cache object: start our own
            else:
                raise TypeError(f"RecursiveForCausalLM needs a RecursiveCache, got {type(cache).__name__}")
        use_cache = self.config.use_cache if use_cache is None else use_cache
        routing = routing or self.default_routing()
        if routing not in ("topk", "causal"):
            raise ValueError(f"routing must be 'topk' or 'causal', got {routing!r}")
        if use_cache and cache is None:
            cache = RecursiveCache()
        hidden, aux, stats = self.model(input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                        cache=cache, routing=routing)
        logits = self.lm_head(hidden)
        lm_loss = loss = None
        if labels is not None:
            lm_loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten().to(logits.device),
                                      ignore_index=-100)
            coefs = {"router_bce": self.config.mor_bce_coef, "balance": self.config.mor_balance_coef,
                     "z_loss": self.config.mor_z_loss_coef}
            loss = lm_loss
            for name, value in aux.items():
                if coefs.get(name, 0.0):
                    loss = loss + coefs[name] * value
        return RecursiveCausalLMOutput(loss=loss, lm_loss=lm_loss, logits=logits, cache=cache if use_cache else None,
                                       aux_losses=aux, router_stats=stats)

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, *args, **kwargs):
        """Carry our cache between ``generate`` steps on every transformers 5.x.

        transformers >= 5.2x reads ``outputs["cache"]``; older 5.x read ``outputs["past_key_values"]``,
        a key our output does not hold, so hand the cache over under that name there.
        """
        model_kwargs = super()._update_model_kwargs_for_generation(outputs, model_kwargs, *args, **kwargs)
        cache = getattr(outputs, "cache", None)
        if cache is not None and "cache" not in model_kwargs:
            model_kwargs["past_key_values"] = cache
        return model_kwargs

    def _reorder_cache(self, cache: RecursiveCache, beam_idx: torch.Tensor) -> RecursiveCache:
        cache.reorder_cache(beam_idx)
        return cache


def count_parameters_formula(config: RecursiveConfig) -> int:
    """Closed-form parameter count of :class:`RecursiveForCausalLM` (tied params counted once).

    Per unique layer: ``d*H*D + 2*d*Hk*D + H*D*d`` (attention) + ``3*d*I`` (SwiGLU) + ``2d``
    (norms); each shared-block linear (in, out) adds ``N_r * r * (in + out)`` LoRA parameters;
    routers add ``N_r * d`` (twice with the expert-choice auxiliary router); embeddings ``V*d`` (twice when untied) and the final norm ``d``.
    """
    d, I, V = config.hidden_size, config.intermediate_size, config.vocab_size
    H, Hk, D = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    linears = [(d, H * D), (d, Hk * D), (d, Hk * D), (H * D, d), (d, I), (d, I), (I, d)]
    per_layer = sum(i * o for i, o in linears) + 2 * d
    total = config.num_unique_layers * per_layer
    if config.relaxation_rank > 0 and config.sharing != "none":
        lora = sum(config.num_recursions * config.relaxation_rank * (i + o) for i, o in linears)
        total += config.block_size * lora
    if config.mor_router is not None:
        total += config.num_recursions * d
        if config.mor_router == "expert" and getattr(config, "mor_aux_router", False):
            total += config.num_recursions * d
    total += V * d * (1 if config.tie_word_embeddings else 2) + d
    return total
