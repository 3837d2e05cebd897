"""KV caches with per-sequence lengths for recursive and MoR decoders (SPEC 4, SPEC 5).

Every token of a row gets an absolute *slot* (0, 1, 2, ... in arrival order, padding included).
A :class:`LayerKV` holds the keys/values written at one effective layer position; rows may hold
different numbers of entries (recursion-wise caching writes only the tokens routed to that
recursion), so each row has its own length and every entry remembers its slot, which drives the
causal and document masks. :class:`RecursiveCache` owns one :class:`LayerKV` per effective
position plus per-slot metadata (document segment, validity).

:func:`kv_cache_entries` gives the analytic KV memory of a configuration (SPEC 4's table).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # pragma: no cover
    from depthmux.recursion.config import RecursiveConfig


class LayerKV:
    """Keys/values of one effective layer position, ragged over the batch.

    Buffers: ``k``/``v`` [B, H_kv, capacity, D], ``slot`` [B, capacity] (absolute slot of each
    entry, -1 = empty), ``length`` [B] (entries per row). Capacity grows by doubling.
    """

    def __init__(self) -> None:
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.slot: torch.Tensor | None = None
        self.length: torch.Tensor | None = None

    def _grow(self, needed: int, like: torch.Tensor, batch: int) -> None:
        cap = 0 if self.k is None else self.k.shape[2]
        if needed <= cap:
            return
        new_cap = max(needed, 2 * cap, 16)
        hk, d = like.shape[1], like.shape[3]
        extra = new_cap - cap
        k_pad = like.new_zeros(batch, hk, extra, d)
        s_pad = torch.full((batch, extra), -1, dtype=torch.long, device=like.device)
        if self.k is None:
            self.k, self.v, self.slot = k_pad, k_pad.clone(), s_pad
            self.length = torch.zeros(batch, dtype=torch.long, device=like.device)
        else:
            self.k = torch.cat([self.k, k_pad], dim=2)
            self.v = torch.cat([self.v, k_pad.clone()], dim=2)
            self.slot = torch.cat([self.slot, s_pad], dim=1)

    def append(self, k: torch.Tensor, v: torch.Tensor, slot: torch.Tensor, write: torch.Tensor) -> None:
        """Append the entries where ``write`` holds.

        Args:
            k, v: [B, H_kv, T, D] new keys (RoPE applied) and values.
            slot: [B, T] absolute slots of the new tokens.
            write: [B, T] bool, which of them to store (routed and not padding).
        """
        B = k.shape[0]
        n_new = write.long().sum(1)
        base = self.length if self.length is not None else torch.zeros(B, dtype=torch.long, device=k.device)
        self._grow(int((base + n_new).max().item()) if B else 0, k, B)
        dest = self.length[:, None] + write.long().cumsum(1) - 1  # [B, T]
        b_idx, t_idx = write.nonzero(as_tuple=True)
        d_idx = dest[b_idx, t_idx]
        kt, vt = k.transpose(1, 2), v.transpose(1, 2)  # [B, T, H_kv, D]
        if torch.is_grad_enabled() and (k.requires_grad or v.requires_grad or self.k.requires_grad):
            # out of place: autograd flows from the cached keys back to the layer that made them
            self.k = self.k.transpose(1, 2).index_put((b_idx, d_idx), kt[b_idx, t_idx]).transpose(1, 2)
            self.v = self.v.transpose(1, 2).index_put((b_idx, d_idx), vt[b_idx, t_idx]).transpose(1, 2)
        else:  # decoding: write in place, O(new tokens) per step
            self.k.transpose(1, 2).index_put_((b_idx, d_idx), kt[b_idx, t_idx])
            self.v.transpose(1, 2).index_put_((b_idx, d_idx), vt[b_idx, t_idx])
        self.slot.index_put_((b_idx, d_idx), slot[b_idx, t_idx])
        self.length = self.length + n_new

    def view(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(k, v, slot)`` trimmed to the longest row: [B, H_kv, n, D] twice and [B, n]."""
        if self.k is None:
            raise RuntimeError("empty LayerKV")
        n = int(self.length.max().item())
        return self.k[:, :, :n], self.v[:, :, :n], self.slot[:, :n]

    def reorder(self, index: torch.Tensor) -> None:
        """Select rows (beam search / dropping finished sequences)."""
        if self.k is not None:
            self.k, self.v = self.k.index_select(0, index), self.v.index_select(0, index)
            self.slot, self.length = self.slot.index_select(0, index), self.length.index_select(0, index)


class RecursiveCache:
    """Per-position KV caches plus per-slot metadata for one batch of sequences.

    Attributes:
        layers: effective position p -> :class:`LayerKV`. Recursion-wise MoR writes position
            ``pre + r*K + j`` for recursion r, block layer j; recursive sharing writes only r = 0.
        seg: [B, S] document segment of every slot; ``seq_len`` = S slots seen so far.
        num_valid: [B] non-padding tokens seen per row (next RoPE position when not given).
        last_seg: [B] segment of the latest slot.
    """

    def __init__(self) -> None:
        self.layers: dict[int, LayerKV] = {}
        self.seg: torch.Tensor | None = None
        self.num_valid: torch.Tensor | None = None
        self.last_seg: torch.Tensor | None = None

    @property
    def seq_len(self) -> int:
        return 0 if self.seg is None else self.seg.shape[1]

    def get_seq_length(self, layer_idx: int = 0) -> int:  # HF-style name
        return self.seq_len

    def layer(self, position: int) -> LayerKV:
        if position not in self.layers:
            self.layers[position] = LayerKV()
        return self.layers[position]

    def extend(self, seg_new: torch.Tensor, valid_new: torch.Tensor) -> torch.Tensor:
        """Register T new slots per row; returns their absolute slots [B, T]."""
        B, T = seg_new.shape
        start = self.seq_len
        self.seg = seg_new if self.seg is None else torch.cat([self.seg, seg_new], dim=1)
        nv = valid_new.long().sum(1)
        self.num_valid = nv if self.num_valid is None else self.num_valid + nv
        self.last_seg = seg_new[:, -1] if T else self.last_seg
        return torch.arange(start, start + T, device=seg_new.device).expand(B, T)

    def entries_per_position(self) -> dict[int, torch.Tensor]:
        """Position -> [B] number of cached tokens (the memory actually held)."""
        return {p: kv.length.clone() for p, kv in sorted(self.layers.items()) if kv.length is not None}

    def num_entries(self) -> int:
        """Total cached (token, layer position) pairs over the batch."""
        return int(sum(int(v.sum()) for v in self.entries_per_position().values()))

    def reorder_cache(self, index: torch.Tensor) -> None:
        for kv in self.layers.values():
            kv.reorder(index)
        if self.seg is not None:
            self.seg = self.seg.index_select(0, index)
            self.num_valid = self.num_valid.index_select(0, index)
            self.last_seg = self.last_seg.index_select(0, index)


def kv_cache_entries(
    config: RecursiveConfig, seq_len: int, selected_counts: list[int] | None = None
) -> dict[str, float]:
    """Analytic KV-cache size of one sequence of ``seq_len`` tokens, in (token, layer) entries.

    Args:
        config: the model configuration.
        seq_len: T, tokens in the sequence.
        selected_counts: tokens that reach each recursion r = 1..N_r; default for expert-choice
            is the training top-k (:func:`~depthmux.recursion.routers.expected_counts`:
            ``floor(capacity_r * T)``, at least 1), for everything else all T.

    Returns a dict with ``block`` (entries held by the recursion block), ``block_vanilla``
    (N_r * K * T, every token cached at every recursion), ``block_ratio`` (SPEC 4: recursion-wise
    with the default capacities gives (N_r + 1) / (2 N_r); recursive sharing gives 1 / N_r),
    ``total``, ``vanilla`` (L * T) and ``ratio``, plus ``bytes_per_entry`` for float32 K and V
    (multiply by the dtype size / 4 for other dtypes).
    """
    L, n, K = config.num_hidden_layers, config.num_recursions, config.block_size
    T = seq_len
    per_entry = 2 * config.num_key_value_heads * config.head_dim * 4
    if config.sharing in ("none", "sequence", "middle_sequence"):
        total = L * T
        return {
            "block": float(total),
            "block_vanilla": float(total),
            "block_ratio": 1.0,
            "total": float(total),
            "vanilla": float(total),
            "ratio": 1.0,
            "bytes_per_entry": float(per_entry),
        }
    if selected_counts is None:
        if config.mor_router == "expert":
            from depthmux.recursion.routers import expected_counts

            selected_counts = expected_counts(config.capacities(), T)
        else:
            selected_counts = [T] * n
    if len(selected_counts) != n:
        raise ValueError(f"selected_counts needs {n} entries, got {len(selected_counts)}")
    if config.mor_kv == "share_first":
        block = K * T  # first recursion holds every token; later recursions reuse it
    else:
        block = K * sum(selected_counts)
    unique = (config.num_prefix_layers + config.num_suffix_layers) * T
    block_vanilla = n * K * T
    return {
        "block": float(block),
        "block_vanilla": float(block_vanilla),
        "block_ratio": block / block_vanilla,
        "total": float(block + unique),
        "vanilla": float(L * T),
        "ratio": (block + unique) / (L * T),
        "bytes_per_entry": float(per_entry),
    }
