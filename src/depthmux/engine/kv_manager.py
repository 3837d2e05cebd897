"""The decode engine's KV memory: paged streams, byte accounting, and the cache the model's layers see (SPEC 4, 5).

Layout. A *stream* is the set of KV entries of one sequence that always holds the same tokens:

* the **main** stream (key ``(request_id, MAIN)``): every token, for the unique layers (the prefix and
  suffix layers of middle-cycle models; every layer of vanilla / sequence-shared / converted
  LLaMA models);
* one **recursion stream** per recursion r (key ``(request_id, r)``) for the K shared-block layers:
  recursion-wise KV writes only the tokens that reached recursion r; recursive KV sharing
  (``mor_kv="share_first"``) keeps one stream (r = 0) that every recursion reads.

Memory is paged. K/V live in one :class:`KVArena` shared by both pools, ``k``/``v`` [units,
block_size, H_kv, D]: a *unit* is one layer's page; the arena grows by doubling but never past the
budget, so the K/V bytes allocated, all pools together, are at most the budget (2 units, null and
trash, come out of it). Each pool (main, block) hands out *pages* of its streams: a page has one
unit per *role* (a layer of the stream: main: prefix then suffix layers; block: shared layer j;
``units`` [pages, roles] maps them) and ``pos`` [pages, block_size] (the token position of each
entry, -1 = empty). A stream owns a list of page ids, each page holding ``block_size`` consecutive
entries of the stream in every role, so a stream of n entries uses ``ceil(n / block_size)`` pages.
Pages and units come from free lists and go back when a request finishes, is cancelled or is preempted:
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
and ``1 / N_r`` for recursive sharing. Admission reserves at the fractions the routing really uses:
:meth:`KVManager.stream_fractions` measures them (tokens written per recursion stream over tokens
written to the main stream) once a few hundred tokens went in, and uses the expectation before.

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

    def reservation_bytes(self, num_tokens: int, fractions: tuple[float, ...] | None = None) -> int:
        """Bytes reserved for a sequence of ``num_tokens`` tokens: whole pages of the main stream and
        of each recursion stream at its fraction (``fractions``, default the expected ones)."""
        total = self.blocks_for(num_tokens) * self.block_bytes(MAIN)
        for s, frac in enumerate(self.stream_fractions if fractions is None else fractions):
            total += self.blocks_for(math.ceil(frac * num_tokens - 1e-9)) * self.block_bytes(s)
        return total

    def stream_of(self, recursion: int) -> tuple[int, bool]:
        """(stream index, writes) of a token running recursion ``recursion`` of the shared block:
        recursion-wise KV writes stream r; recursive KV sharing reads stream 0 and writes it at r = 0 only."""
        if self.share_first:
            return 0, recursion == 0
        return recursion, True

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


class KVArena:
    """K/V storage shared by every pool: ``k``/``v`` [capacity, block_size, H_kv, D]; a *unit* is one
    layer's page (``block_size`` entries of one layer). Units come from one free list; the tensors
    grow by doubling (at least 64 units) but never past ``max_units``, so the K/V bytes allocated, all
    pools together, never exceed the budget. Unit 0 is the null unit (never written), unit 1 the trash
    unit (filler writes)."""

    def __init__(self, spec: KVSpec, max_units: int):
        self.spec, self.max_units = spec, max_units
        self.free: list[int] = []
        self.next_id = _RESERVED_BLOCKS
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    @property
    def unit_bytes(self) -> int:
        return self.spec.block_size * self.spec.entry_bytes  # K and V of one layer's page

    @property
    def capacity(self) -> int:
        return 0 if self.k is None else self.k.shape[0]

    def allocated_bytes(self) -> int:
        """K/V tensor bytes allocated now (the capacity, used or not)."""
        return self.capacity * self.unit_bytes

    def take(self, n: int) -> list[int]:
        out = []
        for _ in range(n):
            if self.free:
                out.append(self.free.pop())
                continue
            if self.next_id >= self.max_units:
                raise DepthmuxError("KV budget exhausted")  # the scheduler keeps headroom, so this is a bug guard
            out.append(self.next_id)
            self.next_id += 1
        return out

    def ensure(self, device: torch.device, dtype: torch.dtype) -> None:
        """Make the tensors hold every unit handed out so far (growth capped at ``max_units``)."""
        need = self.next_id
        if need <= self.capacity:
            return
        cap = min(max(need, 2 * self.capacity, 64), self.max_units)
        s = self.spec
        shape = (cap, s.block_size, s.num_kv_heads, s.head_dim)
        k, v = torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype)
        if self.k is not None:
            old = self.capacity
            k[:old], v[:old] = self.k, self.v
        self.k, self.v = k, v


class BlockPool:
    """Pages of one kind of stream (main or block): a page has ``roles`` layers, each an arena unit
    (``units`` [capacity, roles] long maps page -> units); ``pos`` [capacity, block_size] is the token
    position of each entry (-1 = empty). Page ids come from a free list; ``units`` / ``pos`` are
    metadata (8 bytes per entry slot and per unit) that grow by doubling."""

    def __init__(self, roles: int, arena: KVArena):
        self.roles, self.arena, self.spec = roles, arena, arena.spec
        self.free: list[int] = []
        self.next_id = _RESERVED_BLOCKS
        self.page_units: dict[int, list[int]] = {}
        self.units: torch.Tensor | None = None
        self.pos: torch.Tensor | None = None
        self._dirty: list[int] = []

    @property
    def capacity(self) -> int:
        return 0 if self.pos is None else self.pos.shape[0]

    def take(self) -> int:
        page = self.free.pop() if self.free else self.next_id
        if page == self.next_id:
            self.next_id += 1
        self.page_units[page] = self.arena.take(self.roles)
        self._dirty.append(page)
        return page

    def release(self, pages: list[int]) -> None:
        for page in pages:
            self.arena.free.extend(self.page_units.pop(page))
        self.free.extend(pages)

    def ensure(self, device: torch.device, dtype: torch.dtype) -> None:
        """Make ``units`` / ``pos`` hold every page handed out and the arena every unit."""
        self.arena.ensure(device, dtype)
        need = self.next_id
        if need > self.capacity:
            cap = max(need, 2 * self.capacity, 64)
            units = torch.full((cap, self.roles), NULL_BLOCK, dtype=torch.long, device=device)
            units[TRASH_BLOCK] = TRASH_BLOCK
            pos = torch.full((cap, self.spec.block_size), -1, dtype=torch.long, device=device)
            if self.pos is not None:
                old = self.capacity
                units[:old], pos[:old] = self.units, self.pos
            self.units, self.pos = units, pos
        if self._dirty:
            live = [p for p in self._dirty if p in self.page_units]
            if live:
                idx = torch.tensor(live, dtype=torch.long)
                self.units[idx.to(device)] = torch.tensor([self.page_units[p] for p in live], dtype=torch.long).to(
                    device
                )
            self._dirty = []


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
        unit = b.pool.units[block, self.role]  # [R, M] arena units of this layer's pages
        arena = b.pool.arena
        arena.k.index_put_((unit, off), k.transpose(1, 2).to(arena.k.dtype))
        arena.v.index_put_((unit, off), v.transpose(1, 2).to(arena.v.dtype))
        b.pool.pos.index_put_((block, off), torch.where(w, slot, torch.full_like(slot, -1)))

    def view(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(k, v, pos)`` of the rows' streams: [R, H_kv, n, D] twice and [R, n] (n = nb * block_size)."""
        b = self.binding
        R, nb = b.table.shape
        s = b.pool.spec
        unit = b.pool.units[b.table, self.role]  # [R, nb]
        k = b.pool.arena.k[unit].view(R, nb * s.block_size, s.num_kv_heads, s.head_dim).transpose(1, 2)
        v = b.pool.arena.v[unit].view(R, nb * s.block_size, s.num_kv_heads, s.head_dim).transpose(1, 2)
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
        self.arena = KVArena(spec, budget_bytes // (spec.block_size * spec.entry_bytes))
        self.page_budget_bytes = (self.arena.max_units - _RESERVED_BLOCKS) * self.arena.unit_bytes
        if self.page_budget_bytes <= 0:
            raise DepthmuxError(
                f"kv_budget_bytes of {budget_bytes} is too small: it must hold at least 3 pages of one layer "
                f"({3 * self.arena.unit_bytes} bytes)"
            )
        # a pure cycle model (no prefix/suffix layers) has a main stream of 0 roles: its pages take no
        # arena units and cost no bytes (they hold only positions); the block pool's pages bound them
        self.pools = {"main": BlockPool(spec.num_main_layers, self.arena)}
        if spec.recursion_loop:
            self.pools["block"] = BlockPool(spec.num_block_layers, self.arena)
        self.stream_tokens: dict[int, int] = {}  # stream index -> tokens written over the engine's life
        self.blocks: dict[tuple[str, int], list[int]] = {}
        self.lengths: dict[tuple[str, int], int] = {}
        self.reserved: dict[str, int] = {}
        self.bytes_in_use = 0
        self.peak_bytes = 0
        self.entries_written = 0  # (token, layer) KV entries allocated over the engine's life

    # -- accounting (host only) -------------------------------------------------------------
    def _pool_of(self, stream: int) -> BlockPool:
        return self.pools["main" if stream == MAIN else "block"]

    MEASURE_AFTER = 256
    """Main-stream tokens written before the measured stream fractions replace the spec's."""

    def stream_fractions(self) -> tuple[float, ...]:
        """Fraction of tokens written to each recursion stream: measured (tokens written there over
        tokens written to the main stream) once :attr:`MEASURE_AFTER` tokens went in, else the spec's
        expectation."""
        main = self.stream_tokens.get(MAIN, 0)
        if main < self.MEASURE_AFTER or not self.spec.recursion_loop:
            return self.spec.stream_fractions
        return tuple(min(1.0, self.stream_tokens.get(s, 0) / main) for s in range(self.spec.num_streams))

    def reservation_bytes(self, num_tokens: int) -> int:
        """Bytes to reserve for a sequence of ``num_tokens`` tokens at the fractions the routing really uses."""
        return self.spec.reservation_bytes(num_tokens, self.stream_fractions())

    def reserve(self, request_id: str, num_tokens: int) -> None:
        self.reserved[request_id] = self.reservation_bytes(num_tokens)

    def allocated_bytes(self) -> int:
        """K/V tensor bytes allocated (all pools together; at most the budget)."""
        return self.arena.allocated_bytes()

    @property
    def reserved_bytes(self) -> int:
        return sum(self.reserved.values())

    def free_bytes(self) -> int:
        return self.page_budget_bytes - self.bytes_in_use

    def length(self, request_id: str, stream: int) -> int:
        return self.lengths.get((request_id, stream), 0)

    def new_blocks_bytes(self, request_id: str, stream: int, num_new: int) -> int:
        """Bytes of the pages a stream needs to take ``num_new`` more entries."""
        key = (request_id, stream)
        have = len(self.blocks.get(key, ()))
        need = self.spec.blocks_for(self.lengths.get(key, 0) + num_new)
        return max(0, need - have) * self.spec.block_bytes(stream)

    def grow(self, request_id: str, stream: int, num_new: int) -> None:
        """Give a stream the pages to hold ``num_new`` entries beyond its length (the scheduler's plan,
        before a step). Its length does not change until :meth:`commit`; pages the runner does not fill
        go back then."""
        key = (request_id, stream)
        blocks = self.blocks.setdefault(key, [])
        need = self.spec.blocks_for(self.lengths.get(key, 0) + num_new)
        pool, page_bytes = self._pool_of(stream), self.spec.block_bytes(stream)
        while len(blocks) < need:
            if self.bytes_in_use + page_bytes > self.page_budget_bytes:
                raise DepthmuxError("KV budget exhausted")  # the scheduler plans within the free bytes: a bug guard
            blocks.append(pool.take())
            self.bytes_in_use += page_bytes
        self.peak_bytes = max(self.peak_bytes, self.bytes_in_use)

    def commit(self, request_id: str, stream: int, num_written: int) -> None:
        """The runner wrote ``num_written`` entries after the stream's end (in pages :meth:`grow` gave it):
        they join the stream; pages beyond its new length go back."""
        key = (request_id, stream)
        new = self.lengths.get(key, 0) + num_written
        if self.spec.blocks_for(new) > len(self.blocks.get(key, ())):
            raise RuntimeError(f"stream {key} wrote {num_written} entries beyond the pages planned for it")
        if num_written:
            self.lengths[key] = new
            self.entries_written += num_written * self._pool_of(stream).roles
            self.stream_tokens[stream] = self.stream_tokens.get(stream, 0) + num_written
        self._trim(key)

    def truncate(self, request_id: str, stream: int, length: int) -> None:
        """Forget a stream's entries from ``length`` on (rejected speculative drafts): they are marked
        empty, pages beyond the new length go back, the next write goes to entry ``length``."""
        key = (request_id, stream)
        old = self.lengths.get(key, 0)
        if length >= old:
            return
        pool = self._pool_of(stream)
        bs = self.spec.block_size
        index = torch.arange(length, old)
        blocks = torch.tensor(self.blocks[key])[index // bs]
        live = blocks < pool.capacity  # pages never bound to a step have no tensor rows (host-only use)
        if bool(live.any()):
            pool.pos[blocks[live].to(pool.pos.device), (index[live] % bs).to(pool.pos.device)] = -1
        self.lengths[key] = length
        self._trim(key)

    def _trim(self, key: tuple[str, int]) -> None:
        """Give back the pages of a stream beyond its length."""
        blocks = self.blocks.get(key)
        if blocks is None:
            return
        keep = self.spec.blocks_for(self.lengths.get(key, 0))
        if len(blocks) > keep:
            self._release(key[1], blocks[keep:])
            del blocks[keep:]
        if not blocks:
            self.blocks.pop(key)
            self.lengths.pop(key, None)

    def _release(self, stream: int, pages: list[int]) -> None:
        """Return pages of ``stream`` to their pool, emptied (positions -1) for their next owner."""
        pool = self._pool_of(stream)
        if pages and pool.pos is not None:
            live = [b for b in pages if b < pool.capacity]
            if live:
                pool.pos[torch.tensor(live, device=pool.pos.device)] = -1
        pool.release(pages)
        self.bytes_in_use -= len(pages) * self.spec.block_bytes(stream)

    def free(self, request_id: str) -> int:
        """Return every page of a request to its pool; returns the bytes freed."""
        before = self.bytes_in_use
        for key in [k for k in self.blocks if k[0] == request_id]:
            self._release(key[1], self.blocks.pop(key))
            self.lengths.pop(key, None)
        self.reserved.pop(request_id, None)
        return before - self.bytes_in_use

    def pages_in_use(self) -> int:
        """Pages held by requests, all pools together."""
        return sum(len(b) for b in self.blocks.values())

    def stream_kv(self, request_id: str, stream: int, role: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The K and V entries of one role (layer) of a stream, [n, H_kv, D] each (for checks)."""
        pool = self._pool_of(stream)
        pool.ensure(self.device, self.dtype)
        n = self.lengths.get((request_id, stream), 0)
        units = pool.units[torch.tensor(self.blocks.get((request_id, stream), []), dtype=torch.long), role]
        return self.arena.k[units].flatten(0, 1)[:n], self.arena.v[units].flatten(0, 1)[:n]

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
