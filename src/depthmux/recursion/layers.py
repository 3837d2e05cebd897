"""Decoder layers of the recursive / MoR models (SPEC 3, SPEC 4), with their per-call contexts.

* :class:`RMSNorm`, rotary embeddings (:func:`rope_cos_sin`, :func:`apply_rope`), SwiGLU :class:`MLP`.
* :class:`RelaxedLinear`: a linear layer shared by N_r loops with an optional per-loop LoRA
  ``W x + B_i A_i x`` (scaling 1, SPEC 3).
* :class:`TokenContext` (positions, slots, segments, write mask, rope tables, cache of the tokens a
  stage processes) and :class:`LayerContext` (plus the layer position's KV, LoRA loop, read-only).
* :class:`Attention` / :class:`DecoderLayer`: pre-norm attention (GQA) + MLP, ``layer(x, ctx)``.
  Attention keys always come from a :class:`~depthmux.recursion.kv_cache.LayerKV` (a temporary one
  when no cache is kept), so the same code serves training, prefill, recursion-wise MoR (only
  routed tokens write and read) and recursive KV sharing (later recursions read the first
  recursion's keys).
* :class:`BlockLayer`: one effective layer position of a recursion step.

Masks: a query at absolute slot s in document segment g sees the cached keys with slot <= s in the
same segment (segments come from ``position_ids`` restarting at 0), so attention never crosses a
document boundary. Cost: every linear (LoRA rows included) and attention (the (query, key) pairs the
mask allows, real queries only) declare their FLOPs to :mod:`depthmux.utils.flops`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from depthmux.recursion.config import RecursiveConfig
from depthmux.recursion.kv_cache import LayerKV, RecursiveCache
from depthmux.utils.flops import add_flops, attention_flops, counting, linear_flops


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


def rope_cos_sin(
    position_ids: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary tables for ``position_ids`` [B, T]: cos, sin [B, T, head_dim] (LLaMA half-split layout)."""
    exponents = torch.arange(0, head_dim, 2, device=position_ids.device, dtype=torch.float32) / head_dim
    inv_freq = 1.0 / (theta**exponents)
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
        """[..., in] -> [..., out]; declares ``2*rows*in*out`` FLOPs (+ ``2*rows*r*(in+out)`` with LoRA)."""
        lora = self.lora_A is not None and loop >= 0
        if counting():
            rows = x.numel() // self.in_features
            cost = linear_flops(rows, self.in_features, self.out_features)
            if lora:
                cost += linear_flops(rows, self.in_features + self.out_features, self.rank)
            add_flops(cost)
        y = F.linear(x, self.weight)
        if lora:
            y = y + F.linear(F.linear(x, self.lora_A[loop]), self.lora_B[loop])
        return y

    def effective_weight(self, loop: int = -1) -> torch.Tensor:
        """The dense weight used at ``loop``: ``W + B_i A_i`` [out, in]."""
        if self.lora_A is None or loop < 0:
            return self.weight
        return self.weight + self.lora_B[loop] @ self.lora_A[loop]

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, lora_rank={self.rank}"


@dataclass
class TokenContext:
    """Per-call context of the tokens a stage processes: a whole chunk [B, T], or the compact subset
    [B, M] of it routed to a recursion (:meth:`subset`).

    Attributes:
        positions: [B, M] long, RoPE positions.
        slots: [B, M] long, absolute cache slots (from :meth:`RecursiveCache.extend`).
        segments: [B, M] long, document segment of each token (packed documents never attend across).
        write: [B, M] bool, real tokens: they store K/V and their attention is counted; False for
            padding and for the filler rows of a compact subset.
        cos, sin: [B, M, D] rotary tables of ``positions``.
        cache: the :class:`RecursiveCache` read and extended (``cache.seg`` [B, S]: segment of every slot).
    """

    positions: torch.Tensor
    slots: torch.Tensor
    segments: torch.Tensor
    write: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor
    cache: RecursiveCache

    def subset(self, index: torch.Tensor, write: torch.Tensor) -> TokenContext:
        """The context of the tokens ``index`` [B, M] (indices into this context's T), ``write`` [B, M]."""
        D = self.cos.shape[-1]
        rows = index[..., None].expand(*index.shape, D)
        return TokenContext(
            positions=self.positions.gather(1, index),
            slots=self.slots.gather(1, index),
            segments=self.segments.gather(1, index),
            write=write,
            cos=self.cos.gather(1, rows),
            sin=self.sin.gather(1, rows),
            cache=self.cache,
        )

    def layer(self, kv_position: int, loop: int = -1, read_only: bool = False) -> LayerContext:
        """The context of one layer call that reads (and, unless ``read_only``, extends) the KV of
        effective position ``kv_position``, with per-loop LoRA ``loop`` (-1: none)."""
        return LayerContext(tokens=self, kv=self.cache.layer(kv_position), loop=loop, read_only=read_only)


@dataclass
class LayerContext:
    """Everything one :class:`DecoderLayer` call needs besides its input.

    Attributes:
        tokens: the :class:`TokenContext` of the tokens processed.
        kv: the :class:`LayerKV` of the layer position (a temporary cache's when no cache is kept).
        loop: LoRA loop index of a shared layer (-1: unique layer, or no relaxation).
        read_only: read ``kv`` without writing (recursive KV sharing at recursions r > 0).
    """

    tokens: TokenContext
    kv: LayerKV
    loop: int = -1
    read_only: bool = False


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

    def forward(self, h: torch.Tensor, ctx: LayerContext) -> torch.Tensor:
        """Attention of the queries in ``h`` [B, M, d] (normed) over the keys held by ``ctx.kv``.

        A query at slot s in segment g sees the cached keys with slot <= s in segment g. Unless
        ``ctx.read_only``, the K/V of the tokens with ``ctx.tokens.write`` are appended first.
        Declares ``4 * allowed_pairs * head_dim`` FLOPs per query head (real queries only).
        Returns: [B, M, d].
        """
        t = ctx.tokens
        B, M, _ = h.shape
        q = self.q_proj(h, ctx.loop).view(B, M, self.num_heads, self.head_dim).transpose(1, 2)
        q = apply_rope(q, t.cos, t.sin)
        if not ctx.read_only:
            k = self.k_proj(h, ctx.loop).view(B, M, self.num_kv_heads, self.head_dim).transpose(1, 2)
            v = self.v_proj(h, ctx.loop).view(B, M, self.num_kv_heads, self.head_dim).transpose(1, 2)
            ctx.kv.append(apply_rope(k, t.cos, t.sin), v, t.slots, t.write)
        K, V, k_slot = ctx.kv.view()
        k_seg = t.cache.seg.gather(1, k_slot.clamp(min=0))
        allowed = (
            (k_slot[:, None, :] >= 0)
            & (k_slot[:, None, :] <= t.slots[:, :, None])
            & (k_seg[:, None, :] == t.segments[:, :, None])
        )
        if counting():
            pairs = int((allowed & t.write[:, :, None]).sum())
            add_flops(attention_flops(pairs, 1, self.num_heads * self.head_dim))
        # padding queries may see nothing: let them see everything (their outputs are discarded)
        allowed = allowed | ~allowed.any(-1, keepdim=True)
        rep = self.num_heads // self.num_kv_heads
        S = K.shape[2]
        if rep > 1:
            # GQA without copying K/V: query heads kv*rep .. kv*rep + rep - 1 share KV head kv, so fold
            # them into the query axis of that head ([B, Hk, rep * M, D]); the mask repeats per head
            q = q.reshape(B, self.num_kv_heads, rep * M, self.head_dim)
            allowed = allowed[:, None, None].expand(B, 1, rep, M, S).reshape(B, 1, rep * M, S)
        else:
            allowed = allowed[:, None]
        out = F.scaled_dot_product_attention(q, K.to(q.dtype), V.to(q.dtype), attn_mask=allowed)
        out = out.reshape(B, self.num_heads, M, self.head_dim)  # SDPA may return a strided layout (CUDA)
        return self.o_proj(out.transpose(1, 2).reshape(B, M, -1), ctx.loop)


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
    """Pre-norm LLaMA block: ``x + attn(norm(x))`` then ``+ mlp(norm(.))``. [B, M, d] -> [B, M, d]."""

    def __init__(self, config: RecursiveConfig, num_loops: int = 1, rank: int = 0):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, num_loops, rank)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config, num_loops, rank)

    def forward(self, x: torch.Tensor, ctx: LayerContext) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), ctx)
        return x + self.mlp(self.post_attention_layernorm(x), ctx.loop)


@dataclass(frozen=True)
class BlockLayer:
    """One layer call of a recursion step: effective ``position``, ``unique`` layer index, LoRA
    ``loop`` (-1 none), the effective position whose KV it uses (``kv_position``) and ``read_only``."""

    position: int
    unique: int
    loop: int
    kv_position: int
    read_only: bool
