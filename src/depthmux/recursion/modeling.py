"""Recursive, relaxed-recursive and Mixture-of-Recursions LLaMA-style decoders (SPEC 3, SPEC 4).

A readable, nanoGPT-sized implementation with Hugging Face conventions:
``RecursiveForCausalLM(config)`` is a ``PreTrainedModel`` + ``GenerationMixin`` so
``save_pretrained`` / ``from_pretrained`` / ``generate`` work.

The layers and their per-call contexts live in :mod:`depthmux.recursion.layers`.

Length: the model's stages, the MoR routing and the update rules read top to bottom in one place, as
Hugging Face's ``modeling_llama.py``.

Pieces, bottom-up (the first four in :mod:`depthmux.recursion.layers`):

* :class:`RMSNorm`, rotary embeddings (:func:`rope_cos_sin`, :func:`apply_rope`), SwiGLU MLP.
* :class:`RelaxedLinear`: a linear layer shared by N_r loops with an optional per-loop LoRA
  ``W x + B_i A_i x`` (scaling 1, SPEC 3).
* :class:`TokenContext` (positions, slots, segments, write mask, rope tables, cache of the tokens a
  stage processes) and :class:`LayerContext` (plus the layer position's KV, LoRA loop, read-only).
* :class:`DecoderLayer`: pre-norm attention (GQA) + MLP, ``layer(x, ctx)``. Attention keys always
  come from a :class:`~depthmux.recursion.kv_cache.LayerKV` (a temporary one when no cache is kept),
  so the same code serves training, prefill, recursion-wise MoR (only routed tokens write and read)
  and recursive KV sharing (later recursions read the first recursion's keys).
* :class:`RecursiveModel`: the public stages ``make_context``, ``embed``, ``prefix``, ``route``,
  ``recursion`` (``run_block`` on a chosen subset plus the update rule), ``suffix``; its
  ``forward`` is exactly these stages in order (SPEC 5: the decode engine's model runner calls them).
* :class:`RecursiveForCausalLM`: ``logits`` (the LM head), losses, outputs, ``parameter_counts``.

MoR update rules (SPEC 4; ``config.mor_update``). ``f(H) = block(H)`` is the shared block's FULL
output (a decoder layer's output already contains its own residual); tokens not selected at a
recursion keep their state.

* no router: ``H^{r+1} = f(H^r)`` for every token;
* expert-choice, ``g = alpha * sigmoid(theta_r^T H^r)``: "published" (default, paper and public
  code) ``H^{r+1} = H^r + g * f(H^r)``; "gated_delta" ``H^r + g * (f(H^r) - H^r)``. Capacities
  ``[1.0] * N_r`` select every token at every recursion: the gate-only control;
* token-choice, depth d and weight ``w = alpha * p_d`` from one router on H^1: recursions 1..d run
  un-gated (``H <- f(H)``); at the last, "published" ``H^1 + w * f^{(d)}(H^1)`` (the whole chain,
  relative to H^1, as the public code) and "gated_delta" ``H + w * (f(H) - H)``.

Masks: a query at absolute slot s in document segment g sees the cached keys with slot <= s in the
same segment. Segments come from ``position_ids`` restarting at 0 (packed documents:
``seg = cumsum(position_ids == 0)`` per row), so attention never crosses a document boundary.

Cost: every linear (LoRA rows included), attention (the (query, key) pairs the mask allows, real
queries only), the routers and the LM head (as embedding) declare their FLOPs to
:mod:`depthmux.utils.flops` while a ``FlopCounter`` is active.
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

from depthmux.errors import DepthmuxError
from depthmux.recursion.config import RecursiveConfig
from depthmux.recursion.kv_cache import RecursiveCache
from depthmux.recursion.layers import (
    BlockLayer,
    DecoderLayer,
    RelaxedLinear,
    RMSNorm,
    TokenContext,
    rope_cos_sin,
)
from depthmux.recursion.routers import (
    ExpertChoiceRouter,
    RouteDecision,
    TokenChoiceRouter,
    balance_loss,
    capacity_k,
    causal_select,
    collect_router_outputs,
    expert_choice_update,
    router_bce,
    token_choice_update,
    topk_select,
    z_loss,
)
from depthmux.utils.flops import add_flops, counting, linear_flops

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
    """The decoder body, as public stages (SPEC 4, SPEC 5: the decode engine calls them).

    ``forward`` is exactly::

        ctx = make_context(input_ids, attention_mask, position_ids, cache)
        x = prefix(embed(input_ids), ctx)
        decision = None
        for r in range(num_recursion_steps):
            decision = route(x, r, ctx, decision, routing)
            x = recursion(x, decision, ctx)
        hidden = suffix(x, ctx)

    ``layers`` holds the unique layers only: prefix (0 or 1), the shared block (K), suffix (0 or 1).
    A shared layer is one ``nn.Module`` reused at every loop position, so its parameters are one
    tensor each (SPEC 3). Cycle-shaped sharing ("cycle", "middle_cycle") has N_r recursion steps,
    step r running the K block layers once at loop r; "none" (vanilla) and sequence-shaped sharing
    (each layer repeated in place, no recursion to route) have one step over all middle positions.
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
            self.router = ExpertChoiceRouter(config.hidden_size, n_loops, config.mor_aux_router)
        elif config.mor_router == "token":
            self.router = TokenChoiceRouter(config.hidden_size, n_loops)
        else:
            self.router = None
        self._steps = self._plan_steps()
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.embed_tokens = value

    # -- layout ----------------------------------------------------------------------------
    @property
    def recursion_loop(self) -> bool:
        """Cycle-shaped sharing runs as N_r recursions of a block (needed for MoR and KV sharing)."""
        return self.config.sharing in ("cycle", "middle_cycle")

    @property
    def num_recursion_steps(self) -> int:
        """Recursion steps of :meth:`forward`: N_r for cycle-shaped sharing, else 1."""
        return len(self._steps)

    def step_layers(self, r: int) -> tuple[BlockLayer, ...]:
        """The layer calls of recursion step ``r``, in order."""
        return self._steps[r]

    def _plan_steps(self) -> list[tuple[BlockLayer, ...]]:
        cfg = self.config
        schedule = cfg.layer_schedule()
        pre, K = cfg.num_prefix_layers, cfg.block_size
        if not self.recursion_loop:
            middle = range(pre, cfg.num_hidden_layers - cfg.num_suffix_layers)
            return [tuple(BlockLayer(p, schedule[p][0], schedule[p][1], p, False) for p in middle)]
        share = cfg.mor_kv == "share_first"
        steps = []
        for r in range(cfg.num_recursions):
            read_only = share and r > 0
            steps.append(
                tuple(
                    BlockLayer(pre + r * K + j, pre + j, r, pre + j if read_only else pre + r * K + j, read_only)
                    for j in range(K)
                )
            )
        return steps

    # -- stages ----------------------------------------------------------------------------
    def make_context(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: RecursiveCache | None = None,
    ) -> TokenContext:
        """Register the new tokens in ``cache`` and describe them for the layers.

        Args:
            input_ids: [B, T] new tokens (the ones not yet in ``cache``).
            attention_mask: [B, T] or [B, S + T] (1 = real token); padding never enters the cache.
            position_ids: [B, T] RoPE positions; restarts at 0 mark packed documents. Default:
                running count of real tokens (left padding handled).
            cache: a :class:`RecursiveCache` to read and extend (a new temporary one if None).
        Returns: the :class:`TokenContext` of the chunk ([B, T]).
        """
        B, T = input_ids.shape
        device = input_ids.device
        cache = cache if cache is not None else RecursiveCache()
        if attention_mask is None:
            valid = torch.ones(B, T, dtype=torch.bool, device=device)
        else:
            valid = attention_mask[:, -T:].to(torch.bool)
        zeros = torch.zeros(B, dtype=torch.long, device=device)
        past_valid = cache.num_valid if cache.num_valid is not None else zeros
        last_seg = cache.last_seg if cache.last_seg is not None else zeros
        if position_ids is None:
            pos = (past_valid[:, None] + valid.long().cumsum(1) - 1).clamp(min=0)
            seg = last_seg[:, None].expand(B, T).clone()
        else:
            pos = position_ids.to(device).long().expand(B, T)
            seg = last_seg[:, None] + (pos == 0).long().cumsum(1)
        slot = cache.extend(seg, valid)
        cos, sin = rope_cos_sin(pos, self.config.head_dim, self.config.rope_theta, self.embed_tokens.weight.dtype)
        return TokenContext(positions=pos, slots=slot, segments=seg, write=valid, cos=cos, sin=sin, cache=cache)

    def embed(self, input_ids: torch.LongTensor) -> torch.Tensor:
        """Token embeddings: [B, T] -> [B, T, d]."""
        return self.embed_tokens(input_ids)

    def prefix(self, x: torch.Tensor, ctx: TokenContext) -> torch.Tensor:
        """The unique layers before the shared block (none unless middle_* sharing). [B, T, d] -> [B, T, d]."""
        for p in range(self.config.num_prefix_layers):
            x = self.layers[p](x, ctx.layer(p))
        return x

    def route(
        self,
        h: torch.Tensor,
        r: int,
        ctx: TokenContext,
        previous: RouteDecision | None = None,
        routing: str = "topk",
        losses: bool = True,
    ) -> RouteDecision:
        """The router decision for recursion ``r`` (0-based) over the chunk's tokens (SPEC 4).

        Args:
            h: [B, T, d], H^r, the state entering recursion r.
            ctx: the chunk's context (``ctx.write``: the real tokens).
            previous: the decision for r - 1 (None at r = 0); its selection is this step's candidates
                (hierarchical filtering), and token-choice carries its depths, weights and H^1.
            routing: expert-choice "topk" (per-row top-k of the candidates, ``k`` from the capacity;
                training) or "causal" (``sigmoid(logit) > 0.5``; decoding). A recursion with capacity
                1, and the first recursion under recursive KV sharing, keep every candidate.
            losses: compute this recursion's aux losses and stats; False (decoding, the engine) leaves
                them empty and skips their work and host syncs.
        Returns: a :class:`RouteDecision` ([B, T] masks and gates, this recursion's aux losses and stats).
        """
        cfg = self.config
        candidates = previous.selected if previous is not None else ctx.write
        if cfg.mor_router == "expert":
            logits = self.router(h, r)  # [B, T]
            # the logit the causal rule and the BCE use: the router's own (auxiliary loss) or a
            # separate router on detached states (auxiliary router, MoR paper)
            pred = self.router.aux_logits(h.detach(), r) if self.router.aux_routers is not None else logits
            capacity = cfg.capacities()[r]
            if capacity >= 1.0 or (cfg.mor_kv == "share_first" and r == 0):
                # capacity 1 keeps every candidate whatever the logits (as top-k does in training);
                # recursive KV sharing needs every token at the first recursion
                sel = candidates
            elif routing == "topk":
                sel = topk_select(logits, candidates, capacity_k(capacity, ctx.write.long().sum(1)))
            else:
                sel = causal_select(pred, candidates, cfg.causal_threshold(r))
            if not losses:
                return RouteDecision(r, "expert", sel, gate=cfg.mor_alpha * torch.sigmoid(logits))
            with torch.no_grad():
                causal = pred > cfg.causal_threshold(r)
                agree = ((causal == sel) & candidates).sum() / candidates.sum().clamp(min=1)
            return RouteDecision(
                r,
                "expert",
                sel,
                gate=cfg.mor_alpha * torch.sigmoid(logits),
                aux_losses={
                    "router_bce": router_bce(pred, sel, candidates),
                    "z_loss": z_loss(logits, candidates, token_choice=False),
                },
                stats={"causal_agreement": agree, "capacity_k": sel.long().sum(1)},
            )
        if cfg.mor_router == "token":
            if previous is not None:
                return RouteDecision(
                    r,
                    "token",
                    candidates & (previous.depth >= r),
                    depth=previous.depth,
                    weight=previous.weight,
                    first_state=previous.first_state,
                )
            logits = self.router(h)  # [B, T, N_r]
            probs = logits.softmax(-1)
            depth = probs.argmax(-1)  # [B, T] 0-based: recursions 0..depth are applied
            weight = cfg.mor_alpha * probs.gather(-1, depth[..., None]).squeeze(-1)
            valid = ctx.write
            if not losses:
                return RouteDecision(r, "token", valid.clone(), depth=depth, weight=weight, first_state=h)
            tokens_per_depth = torch.stack([((depth == i) & valid).sum() for i in range(cfg.num_recursions)])
            return RouteDecision(
                r,
                "token",
                valid.clone(),
                depth=depth,
                weight=weight,
                first_state=h,
                aux_losses={
                    "balance": balance_loss(probs, depth, valid),
                    "z_loss": z_loss(logits, valid, token_choice=True),
                },
                stats={"tokens_per_depth": tokens_per_depth.detach()},
            )
        return RouteDecision(r, "none", candidates)

    def run_block(self, h: torch.Tensor, r: int, ctx: TokenContext) -> torch.Tensor:
        """``f(h)``: the shared block's full output at recursion step ``r`` on exactly the given tokens.

        Args:
            h: [B, M, d] states of the tokens (any subset, e.g. the ones routed to r, compacted).
            r: recursion step (LoRA loop and KV positions: recursion-wise KV writes and reads
                recursion r's cache; recursive sharing at r > 0 reads recursion 0's keys, writing none).
            ctx: their :class:`TokenContext` ([B, M]; ``write`` False on filler rows).
        Returns: [B, M, d].
        """
        for call in self._steps[r]:
            h = self.layers[call.unique](h, ctx.layer(call.kv_position, call.loop, call.read_only))
        return h

    def recursion(self, x: torch.Tensor, decision: RouteDecision, ctx: TokenContext) -> torch.Tensor:
        """Recursion step ``decision.recursion`` on the selected tokens; the others keep their state.

        The selected tokens are gathered into a compact [B, M, d] batch (M = most selected in a
        row), so attention runs among the routed tokens only (recursion-wise KV) or over the
        first recursion's keys (recursive sharing). Their new state is ``f = run_block(h)`` without
        a router, else the MoR update rule (module docstring, ``config.mor_update``).
        Args: x [B, T, d]; decision from :meth:`route`; ctx the chunk's context. Returns: [B, T, d].
        """
        sel = decision.selected
        B, T, d = x.shape
        counts = sel.long().sum(1)
        M = int(counts.max()) if B else 0
        if M == 0:
            return x
        if M == T and bool(sel.all()):
            index, h, sub, dec, real = None, x, ctx, decision, sel
        else:
            key = (~sel).long() * T + torch.arange(T, device=x.device)
            index = key.argsort(dim=1)[:, :M]  # selected tokens first, in time order (distinct indices)
            real = torch.arange(M, device=x.device)[None, :] < counts[:, None]
            h = x.gather(1, index[..., None].expand(B, M, d))
            sub, dec = ctx.subset(index, real), decision.gather(index)
        f = self.run_block(h, decision.recursion, sub)
        new = self.update(h, f, dec)
        new = torch.where(real[..., None], new, h)
        if index is None:
            return new
        return x.scatter(1, index[..., None].expand(B, M, d), new)

    def update(self, h: torch.Tensor, f: torch.Tensor, decision: RouteDecision) -> torch.Tensor:
        """The new state of tokens that ran the block: the update rule of the module docstring.

        Args: h [B, M, d] states entering the recursion; f = ``run_block(h, r, ctx)`` [B, M, d];
        ``decision`` restricted to these tokens ([B, M] fields). ``decision.recursion`` may be a
        long tensor broadcastable to [B, M] (tokens at different recursions, e.g. the decode
        engine's depth-wise batch). Returns: [B, M, d].
        """
        rule = self.config.mor_update
        if decision.kind == "expert":
            return expert_choice_update(h, f, decision.gate, rule)
        if decision.kind == "token":
            return token_choice_update(
                h, f, decision.recursion, decision.depth, decision.weight, decision.first_state, rule
            )
        return f

    def suffix(self, x: torch.Tensor, ctx: TokenContext) -> torch.Tensor:
        """The unique layers after the shared block, then the final norm. [B, T, d] -> [B, T, d]."""
        cfg = self.config
        L = cfg.num_hidden_layers
        for p in range(L - cfg.num_suffix_layers, L):
            x = self.layers[cfg.num_prefix_layers + cfg.block_size](x, ctx.layer(p))
        return self.norm(x)

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: RecursiveCache | None = None,
        routing: str = "topk",
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, Any]]:
        """Run the body: the stages in order (class docstring).

        Args: see :meth:`make_context`; routing: "topk" (training) or "causal" (decoding rule), SPEC 4.
        Returns: hidden states [B, T, d] after the final norm, aux losses, router stats (empty for
        models without a recursion loop).
        """
        ctx = self.make_context(input_ids, attention_mask, position_ids, cache)
        x = self.prefix(self.embed(input_ids), ctx)
        decisions: list[RouteDecision] = []
        decision = None
        for r in range(self.num_recursion_steps):
            decision = self.route(x, r, ctx, decision, routing)
            x = self.recursion(x, decision, ctx)
            decisions.append(decision)
        x = self.suffix(x, ctx)
        if not self.recursion_loop:
            return x, {}, {}
        aux, stats = collect_router_outputs(decisions)
        return x, aux, stats


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

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The LM head on final-normed hidden states: [B, T, d] -> [B, T, V] (declares its FLOPs as embedding)."""
        if counting():
            add_flops(
                linear_flops(hidden.numel() // hidden.shape[-1], hidden.shape[-1], self.lm_head.out_features),
                embedding=True,
            )
        return self.lm_head(hidden)

    def parameter_counts(self) -> dict[str, int]:
        """Unique parameters (a tied LM head counted once): ``{"total", "embedding", "non_embedding"}``;
        ``embedding`` is the input embedding plus an untied LM head."""
        total = sum(p.numel() for p in self.parameters())  # parameters() yields each tensor once
        embedding = self.model.embed_tokens.weight.numel()
        if self.lm_head.weight is not self.model.embed_tokens.weight:
            embedding += self.lm_head.weight.numel()
        return {"total": total, "embedding": embedding, "non_embedding": total - embedding}

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
            raise DepthmuxError(f"RecursiveForCausalLM needs a RecursiveCache, got {type(cache).__name__}")
        use_cache = self.config.use_cache if use_cache is None else use_cache
        routing = routing or self.default_routing()
        if routing not in ("topk", "causal"):
            raise DepthmuxError(f"routing must be 'topk' or 'causal', got {routing!r}")
        if use_cache and cache is None:
            cache = RecursiveCache()
        hidden, aux, stats = self.model(
            input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache, routing=routing
        )
        logits = self.logits(hidden)
        lm_loss = loss = None
        if labels is not None:
            lm_loss = F.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten().to(logits.device), ignore_index=-100
            )
            coefs = {
                "router_bce": self.config.mor_bce_coef,
                "balance": self.config.mor_balance_coef,
                "z_loss": self.config.mor_z_loss_coef,
            }
            loss = lm_loss
            for name, value in aux.items():
                if coefs.get(name, 0.0):
                    loss = loss + coefs[name] * value
        return RecursiveCausalLMOutput(
            loss=loss,
            lm_loss=lm_loss,
            logits=logits,
            cache=cache if use_cache else None,
            aux_losses=aux,
            router_stats=stats,
        )

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, *args, **kwargs):
        """Carry our cache between ``generate`` steps on every transformers 5.x.

        transformers >= 5.2x reads ``outputs["cache"]``; older 5.x read ``outputs["past_key_values"]``,
        a key our output does not hold, so hand the cache over under that name there.
        """
        model_kwargs = super()._update_model_kwargs_for_generation(outputs, model_kwargs, *args, **kwargs)
        cache = outputs.cache
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
    routers add ``N_r * d`` (twice with the expert-choice auxiliary router); embeddings ``V*d``
    (twice when untied) and the final norm ``d``.
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
        if config.mor_router == "expert" and config.mor_aux_router:
            total += config.num_recursions * d
    total += V * d * (1 if config.tie_word_embeddings else 2) + d
    return total
