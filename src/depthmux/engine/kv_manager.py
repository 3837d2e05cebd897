"""The decode engine's KV memory: paged streams, byte accounting, and the cache the model's layers see (SPEC 4, 5).

Layout. A *stream* is the set of KV entries of one sequence that always holds the same tokens:

* the **main** stream (key ``(request_id, MAIN)``): every token, for the unique layers (the prefix and
  suffix layers of middle-cycle models; every layer of vanilla / sequence-shared / converted
  LLaMA models);
* one **recursion stream** per recursion r (key ``(request_id, r)``) for the K shared-block layers:
  recursion-wise KV writes only the tokens that reached recursion r; recursive KV sharing
  (``mor_kv="share_first"``) keeps one stream (r = 0) that every recursion reads.

Memory is paged. Each of the two pools (main, block) is a tensor ``k``/``v``
[roles, num_blocks, block_size, H_kv, D] plus ``pos`` [num_blocks, block_size] (the token position
of each entry, -1 = empty); a *role* is a layer of the stream (main: prefix then suffix layers;
block: shared layer j). A stream owns a list of block ids, each block holding ``block_size``
consecutive entries of the stream in every role, so a stream of n entries uses ``ceil(n /
block_size)`` blocks. Blocks come from a free list (the pool tensor grows by doubling up to what
the byte budget allows) and go back to it when a request finishes, is cancelled or is preempted:
there is no compaction to do, a finished sequence just returns its blocks. Block 0 is the null
block (never written, pos -1: pads block tables), block 1 the trash block (writes of filler rows
land there, it is never read).

Batches are formed by index: a stage call gets a :class:`StreamBinding` (a block table [R, nb]
with one row per batch row, the first write destination of each row and whether the row writes)
and :class:`PagedCache` / :class:`PagedLayerKV` present it to the model's layers with the same
interface as :class:`~depthmux.recursion.kv_cache.RecursiveCache` / ``LayerKV``: ``append`` is a
scatter of only the new entries (O(new tokens)); ``view`` gathers the rows' blocks
([R, H_kv, nb * block_size, D]), unwritten entries masked by their -1 position. Rows of one block
call may belong to different recursions (depth-wise batching): the binding, not the model's layer
position, says which stream a row reads and writes.

Accounting (:class:`KVSpec`, no tensors): bytes per entry ``2 * H_kv * D * dtype_size`` (K and V);
expected bytes per token ``(n_main + K * sum_r frac_r) * entry_bytes`` where ``frac_r`` is the
expected fraction of tokens reaching recursion r (expert-choice: the capacities; token-choice with a
balanced router: ``(N_r - r) / N_r``; no router: 1; shared KV: one stream of fraction 1). So the
block's KV is ``(N_r + 1) / (2 N_r)`` of vanilla for recursion-wise MoR with the default capacities
and ``1 / N_r`` for recursive sharing; the scheduler reserves that many bytes per admitted
request and admits correspondingly more sequences under a fixed budget.

Length: the stream layout, the page pools and the paged layer views share one page layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from depthmux.errors import DepthmuxError

MAIN = -1
"""Stream index of a sequence's main stream (recursion streams are 0, 1, ...)."""
NULL_BLOCK, TRASH_BLOCK = 0, 1
_RESERVED_BLOCKS = 2


@dataclass(frozen=True)
class KVSpec:
    """What a model's KV costs, in plain numbers (the scheduler's view; no tensors).

    Attributes:
        num_layers: L, layers of the equivalent vanilla model (effective depth).
        num_prefix_layers, num_suffix_layers: unique layers around the recursion block (main stream).
        num_main_layers: layers whose KV holds every token (main stream roles).
        num_block_layers: K, layers of the shared block (0 when the model has no recursion loop).
        stream_fractions: expected fraction of tokens written to each recursion stream.
        recursion_loop: the model runs N_r recursions of a shared block (cycle / middle-cycle sharing).
        share_first: recursive KV sharing (one stream, read by every recursion).
        num_kv_heads, head_dim, dtype_bytes: size of one key / value vector.
        block_size: entries per page.
    """

    num_layers: int
    num_prefix_layers: int
    num_suffix_layers: int
    num_main_layers: int
    num_block_layers: int
    stream_fractions: tuple[float, ...]
    recursion_loop: bool
    share_first: bool
    num_kv_heads: int
    head_dim: int
    dtype_bytes: int = 4
    block_size: int = 16

    @classmethod
    def from_config(cls, config, dtype: torch.dtype = torch.float32, block_size: int = 16) -> KVSpec:
        """The spec of a :class:`~depthmux.recursion.RecursiveConfig` (KV stored in ``dtype``)."""
        L, n = config.num_hidden_layers, config.num_recursions
        loop = config.sharing in ("cycle", "middle_cycle")
        pre, suf = config.num_prefix_layers, config.num_suffix_layers
        if not loop:
            main, K, fractions = L, 0, ()
        else:
            main, K = pre + suf, config.block_size
            if config.mor_kv == "share_first":
                fractions = (1.0,)
            elif config.mor_router == "expert":
                fractions, prev = [], 1.0
                for c in config.capacities():  # hierarchical filtering: never more than the recursion before
                    prev = min(prev, float(c))
                    fractions.append(prev)
                fractions = tuple(fractions)
            elif config.mor_router == "token":
                fractions = tuple((n - r) / n for r in range(n))  # balanced router: depth uniform over 1..N_r
            else:
                fractions = (1.0,) * n
        return cls(
            num_layers=L,
            num_prefix_layers=pre,
            num_suffix_layers=suf,
            num_main_layers=main,
            num_block_layers=K,
            stream_fractions=fractions,
            recursion_loop=loop,
            share_first=loop and config.mor_kv == "share_first",
            num_kv_heads=config.num_key_value_heads,
            head_dim=config.head_dim,
            dtype_bytes=torch.empty((), dtype=dtype).element_size(),
            block_size=block_size,
        )

    @property
    def num_streams(self) -> int:
        return len(self.stream_fractions)

    @property
    def entry_bytes(self) -> int:
        """Bytes of one token at one layer: K and V, ``2 * H_kv * D * dtype_size``."""
        return 2 * self.num_kv_heads * self.head_dim * self.dtype_bytes

    def block_bytes(self, stream: int) -> int:
        """Bytes of one page of ``stream`` (MAIN or a recursion stream): every role of the stream."""
        layers = self.num_main_layers if stream == MAIN else self.num_block_layers
        return layers * self.block_size * self.entry_bytes

    def expected_bytes_per_token(self) -> float:
        """``(n_main + K * sum_r frac_r) * entry_bytes`` (module docstring)."""
        return (self.num_main_layers + self.num_block_layers * sum(self.stream_fractions)) * self.entry_bytes

    def vanilla_bytes_per_token(self) -> float:
        """KV bytes per token of the vanilla model of the same effective depth: ``L * entry_bytes``."""
        return self.num_layers * self.entry_bytes

    def block_ratio(self) -> float:
        """Expected KV of the recursion block over vanilla's for the same layers: ``sum frac / N_r``
        (SPEC 4: ``(N_r + 1) / (2 N_r)`` recursion-wise with default capacities, ``1 / N_r`` shared)."""
        if not self.recursion_loop:
            return 1.0
        block_positions = self.num_layers - self.num_prefix_layers - self.num_suffix_layers
        return self.num_block_layers * sum(self.stream_fractions) / block_positions

    def blocks_for(self, num_entries: int) -> int:
        return -(-num_entries // self.block_size)

    def reservation_bytes(self, num_tokens: int) -> int:
        """Bytes reserved for a sequence of ``num_tokens`` tokens: whole pages of the main stream and
        of each recursion stream at its expected fraction."""
        total = self.blocks_for(num_tokens) * self.block_bytes(MAIN)
        for s, frac in enumerate(self.stream_fractions):
            total += self.blocks_for(math.ceil(frac * num_tokens - 1e-9)) * self.block_bytes(s)
        return total

    def locate(self, position: int) -> tuple[str, int]:
        """Which pool and role serve the model's effective layer position ``position`` (a
        ``BlockLayer.kv_position``): ``("main", role)`` or ``("block", j)``."""
        if not self.recursion_loop:
            return "main", position
        pre, K = self.num_prefix_layers, self.num_block_layers
        if position < pre:
            return "main", position
        if position >= self.num_layers - self.num_suffix_layers:
            return "main", pre + position - (self.num_layers - self.num_suffix_layers)
        return "block", (position - pre) % K


class BlockPool:
    """Page storage of one kind of stream: ``k``/``v`` [roles, capacity, block_size, H_kv, D], ``pos``
    [capacity, block_size]. Allocated lazily on first use and grown by doubling."""

    def __init__(self, roles: int, spec: KVSpec, max_blocks: int):
        self.roles, self.spec, self.max_blocks = roles, spec, max_blocks
        self.free: list[int] = []
        self.next_id = _RESERVED_BLOCKS
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.pos: torch.Tensor | None = None

    @property
    def capacity(self) -> int:
        return 0 if self.pos is None else self.pos.shape[0]

    def take(self) -> int:
        if self.free:
            return self.free.pop()
        if self.next_id >= self.max_blocks + _RESERVED_BLOCKS:
            raise DepthmuxError("KV budget exhausted")  # the scheduler keeps headroom, so this is a bug guard
        self.next_id += 1
        return self.next_id - 1

    def ensure(self, device: torch.device, dtype: torch.dtype) -> None:
        """Make the tensors hold every block id handed out so far."""
        need = self.next_id
        if need <= self.capacity:
            return
        cap = min(max(need, 2 * self.capacity, 64), self.max_blocks + _RESERVED_BLOCKS)
        s = self.spec
        shape = (self.roles, cap, s.block_size, s.num_kv_heads, s.head_dim)
        k, v = torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype)
        pos = torch.full((cap, s.block_size), -1, dtype=torch.long, device=device)
        if self.pos is not None:
            old = self.capacity
            k[:, :old], v[:, :old], pos[:old] = self.k, self.v, self.pos
        self.k, self.v, self.pos = k, v, pos


@dataclass
class StreamBinding:
    """The streams of the rows of one stage call, in one pool.

    Attributes:
        pool: the :class:`BlockPool`.
        table: [R, nb] long, block ids of each row's stream (padded with the null block).
        base: [R] long, stream index where each row's first new entry goes.
        writes: [R] bool, rows that store their new entries (False: read only, e.g. shared KV at r > 0).
    """

    pool: BlockPool
    table: torch.Tensor
    base: torch.Tensor
    writes: torch.Tensor


class PagedLayerKV:
    """One layer's KV for a batch of rows (duck-types :class:`~depthmux.recursion.kv_cache.LayerKV`)."""

    def __init__(self, binding: StreamBinding, role: int):
        self.binding, self.role = binding, role

    def append(self, k: torch.Tensor, v: torch.Tensor, slot: torch.Tensor, write: torch.Tensor) -> None:
        """Store the entries where ``write`` (and the row's ``writes``) hold.

        k, v: [R, H_kv, M, D]; slot, write: [R, M]. No host sync: filler entries go to the trash block."""
        b = self.binding
        bs = b.pool.spec.block_size
        w = write & b.writes[:, None]
        dest = b.base[:, None] + w.long().cumsum(1) - 1  # [R, M] stream index of each stored entry
        dest = dest.clamp(min=0)
        col = (dest // bs).clamp(max=b.table.shape[1] - 1)
        block = torch.where(w, b.table.gather(1, col), torch.full_like(col, TRASH_BLOCK))
        off = dest % bs
        b.pool.k[self.role].index_put_((block, off), k.transpose(1, 2).to(b.pool.k.dtype))
        b.pool.v[self.role].index_put_((block, off), v.transpose(1, 2).to(b.pool.v.dtype))
        b.pool.pos.index_put_((block, off), torch.where(w, slot, torch.full_like(slot, -1)))

    def view(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(k, v, pos)`` of the rows' streams: [R, H_kv, n, D] twice and [R, n] (n = nb * block_size)."""
        b = self.binding
        R, nb = b.table.shape
        s = b.pool.spec
        k = b.pool.k[self.role][b.table].view(R, nb * s.block_size, s.num_kv_heads, s.head_dim).transpose(1, 2)
        v = b.pool.v[self.role][b.table].view(R, nb * s.block_size, s.num_kv_heads, s.head_dim).transpose(1, 2)
        return k, v, b.pool.pos[b.table].view(R, nb * s.block_size)


class PagedCache:
    """What a stage call's :class:`~depthmux.recursion.TokenContext` carries as ``cache``: per layer
    position, a :class:`PagedLayerKV` over the rows' main or recursion streams (duck-types
    :class:`~depthmux.recursion.RecursiveCache` for the layers: ``layer(p)`` and ``seg``)."""

    def __init__(
        self,
        spec: KVSpec,
        main: StreamBinding | None,
        block: StreamBinding | None,
        rows: int,
        max_len: int,
        device: torch.device,
    ):
        self.spec, self.main, self.block = spec, main, block
        # one document per sequence: every entry is in segment 0 (a stride-0 view, no memory)
        self.seg = torch.zeros((1, 1), dtype=torch.long, device=device).expand(rows, max_len)

    def layer(self, position: int) -> PagedLayerKV:
        pool, role = self.spec.locate(position)
        binding = self.main if pool == "main" else self.block
        if binding is None:
            raise RuntimeError(f"no {pool} streams bound for layer position {position}")
        return PagedLayerKV(binding, role)


class KVManager:
    """Owns the engine's KV memory: page pools, each request's streams and the byte budget.

    Host bookkeeping (``streams``, lengths, bytes in use, reservations) never touches a tensor, so
    the scheduler can use it without a model; :meth:`binding` builds the tensors of a stage call.

    Args:
        spec: the model's :class:`KVSpec`.
        budget_bytes: total KV bytes allowed (pages of both pools).
        device, dtype: where and how K/V are stored.
    """

    def __init__(
        self, spec: KVSpec, budget_bytes: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ):
        if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int) or budget_bytes <= 0:
            raise DepthmuxError(f"kv_budget_bytes must be a positive integer, got {budget_bytes!r}")
        self.spec, self.budget_bytes = spec, budget_bytes
        self.device, self.dtype = torch.device(device), dtype
        # a pure cycle model (no prefix/suffix layers) has a main stream of 0 roles: its pages cost no
        # bytes and hold only positions, so they are bounded by the block pool's page count instead
        page_bytes = spec.block_bytes(MAIN) or spec.block_bytes(0)
        self.pools = {"main": BlockPool(spec.num_main_layers, spec, budget_bytes // page_bytes)}
        if spec.recursion_loop:
            self.pools["block"] = BlockPool(spec.num_block_layers, spec, budget_bytes // spec.block_bytes(0))
        self.blocks: dict[tuple[str, int], list[int]] = {}
        self.lengths: dict[tuple[str, int], int] = {}
        self.reserved: dict[str, int] = {}
        self.bytes_in_use = 0
        self.peak_bytes = 0
        self.entries_written = 0  # (token, layer) KV entries allocated over the engine's life

    # -- accounting (host only) -------------------------------------------------------------
    def _pool_of(self, stream: int) -> BlockPool:
        return self.pools["main" if stream == MAIN else "block"]

    def reserve(self, request_id: str, num_tokens: int) -> None:
        self.reserved[request_id] = self.spec.reservation_bytes(num_tokens)

    @property
    def reserved_bytes(self) -> int:
        return sum(self.reserved.values())

    def free_bytes(self) -> int:
        return self.budget_bytes - self.bytes_in_use

    def length(self, request_id: str, stream: int) -> int:
        return self.lengths.get((request_id, stream), 0)

    def new_blocks_bytes(self, request_id: str, stream: int, num_new: int) -> int:
        """Bytes of the pages a stream needs to take ``num_new`` more entries."""
        key = (request_id, stream)
        have = len(self.blocks.get(key, ()))
        need = self.spec.blocks_for(self.lengths.get(key, 0) + num_new)
        return max(0, need - have) * self.spec.block_bytes(stream)

    def allocate(self, request_id: str, stream: int, num_new: int) -> int:
        """Extend a stream by ``num_new`` entries (taking pages as needed); returns its previous length."""
        key = (request_id, stream)
        old = self.lengths.get(key, 0)
        blocks = self.blocks.setdefault(key, [])
        need = self.spec.blocks_for(old + num_new)
        pool = self._pool_of(stream)
        while len(blocks) < need:
            if self.bytes_in_use + self.spec.block_bytes(stream) > self.budget_bytes:
                raise DepthmuxError("KV budget exhausted")
            blocks.append(pool.take())
            self.bytes_in_use += self.spec.block_bytes(stream)
        self.peak_bytes = max(self.peak_bytes, self.bytes_in_use)
        self.lengths[key] = old + num_new
        self.entries_written += num_new * pool.roles
        return old

    def free(self, request_id: str) -> int:
        """Return every page of a request to its pool; returns the bytes freed."""
        freed = 0
        keys = [k for k in self.blocks if k[0] == request_id]
        for key in keys:
            stream = key[1]
            blocks = self.blocks.pop(key)
            self.lengths.pop(key, None)
            pool = self._pool_of(stream)
            if blocks and pool.pos is not None:
                pool.pos[torch.tensor(blocks, device=pool.pos.device)] = -1  # reused pages start empty
            pool.free.extend(blocks)
            freed += len(blocks) * self.spec.block_bytes(stream)
        self.bytes_in_use -= freed
        self.reserved.pop(request_id, None)
        return freed

    def pages_in_use(self) -> int:
        """Pages held by requests, all pools together."""
        return sum(len(b) for b in self.blocks.values())

    def entries(self, request_id: str) -> dict[int, int]:
        """Stream -> entries held (MAIN = -1)."""
        return {k[1]: n for k, n in self.lengths.items() if k[0] == request_id}

    # -- tensors for a stage call ------------------------------------------------------------
    def binding(self, keys: list[tuple[str, int]], base: list[int], writes: list[bool] | None = None) -> StreamBinding:
        """The :class:`StreamBinding` of rows whose streams are ``keys`` (all in one pool)."""
        pool = self._pool_of(keys[0][1])
        pool.ensure(self.device, self.dtype)
        tables = [self.blocks.get(k, []) for k in keys]
        nb = max(1, max(len(t) for t in tables))
        table = torch.tensor([t + [NULL_BLOCK] * (nb - len(t)) for t in tables], dtype=torch.long)
        w = torch.tensor(writes if writes is not None else [True] * len(keys), dtype=torch.bool)
        return StreamBinding(
            pool=pool,
            table=table.to(self.device, non_blocking=True),
            base=torch.tensor(base, dtype=torch.long).to(self.device, non_blocking=True),
            writes=w.to(self.device, non_blocking=True),
        )
