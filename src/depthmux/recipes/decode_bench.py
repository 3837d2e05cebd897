"""``depthmux lm bench-decode``: the decode engine measured end to end (SPEC 5).

One seeded workload (:func:`make_workload`: ``num_requests`` requests, prompt and output lengths
drawn uniformly from ``prompt_len`` / ``output_len``, prompts are windows of a packaged corpus
tokenized with the model's tokenizer, or random token ids when the model has none; every request
generates exactly its output length, EOS ignored) is decoded in one process, configurations
interleaved in each repetition, by

* ``hf_static``: transformers ``generate`` in static batches of B requests (arrival order, left
  padding, greedy, each batch runs until its longest output);
* ``engine_lockstep``: the engine, all recursions of a token within one step (exited tokens skipped
  by gathering);
* ``engine_depthwise``: the engine with continuous depth-wise batching;

for the vanilla model (SmolLM2), the MoR model of the same effective depth, and any ``also`` models
(``also1``, ``also2``, ...: e.g. a truncated SmolLM2 or other MoR models, interleaved with the others in
each repetition so every ratio is measured in one process). tokens/s = generated
tokens / wall time; per-request latency = time from the start of the run (every request submitted
at once) until its last token. The engine admits at most B sequences (``max_num_seqs = B``) and runs
at most B items per block call.

Compute ceiling (SPEC 5): after the timed runs, one more (untimed) depth-wise run per model is made under a
:class:`~depthmux.utils.flops.FlopCounter` (the models declare every linear, router, LM head and
attention over the (query, key) pairs actually read: actual contexts, actual routing, prefill
included; on CPU the counting costs well under 1% of a step), which gives FLOPs per generated
token; ``compute_ceiling`` = vanilla / MoR. Before the timed runs, two short requests per model warm up
every timed path (HF static and both engine policies), so both sides of each comparison are warm.
``fraction_of_ceiling`` = (MoR depth-wise tokens/s / vanilla engine tokens/s) / ceiling, with the
vanilla engine's default policy (depth-wise); ``speedup_vs_hf_static`` = vanilla engine / vanilla
HF static. KV memory (:func:`kv_memory`): KV bytes per cached token measured from the entries the
engine wrote (vanilla, MoR recursion-wise, and the same MoR weights served with recursive KV
sharing), next to SPEC 4's expected block ratios ``(N_r+1)/(2N_r)`` and ``1/N_r``, and how many
workload requests the scheduler admits under one fixed KV budget for each.
``breakdown=True`` adds a time breakdown of the engine runs (:func:`time_breakdown`).

Length: one benchmark job (workload, three decoding paths, FLOP/KV accounting, breakdown) whose
parts only make sense together.
"""

from __future__ import annotations

import contextlib
import copy
import random
import statistics
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from depthmux.data.text import load_corpus
from depthmux.engine import (
    LLM,
    UNLIMITED_KV_BYTES,
    KVSpec,
    SamplingParams,
    admitted_count,
    as_recursive_model,
)
from depthmux.errors import DepthmuxError
from depthmux.lm import HFCausalLMAdapter, load_lm, load_saved_tokenizer, pretrained_model_dir
from depthmux.recipes.mor_smollm2 import DEFAULT_MOR_DIR
from depthmux.recursion import RecursiveForCausalLM
from depthmux.utils.checks import check_device, check_int, check_seed
from depthmux.utils.flops import FlopCounter
from depthmux.utils.progress import log_above, progress_bar

CONFIGS = ("hf_static", "engine_lockstep", "engine_depthwise")
QUICK = dict(num_requests=16, prompt_len=(16, 48), output_len=(8, 24), batch=16, repeats=1)
"""``--quick``: the same workload shape, fewer and shorter requests, one repetition."""


@dataclass
class DecodeBenchSpec:
    """What to measure (module docstring); :meth:`validate` checks every field."""

    model: str = "smollm2"
    mor_model: str = DEFAULT_MOR_DIR
    num_requests: int = 128
    prompt_len: tuple[int, int] = (16, 256)
    output_len: tuple[int, int] = (8, 128)
    batch: int = 32
    repeats: int = 2
    kv_budget_mib: float = 256.0
    corpus: str = "shakespeare"
    seed: int = 0
    breakdown: bool = False
    device: str = "cpu"
    also: tuple[str, ...] = ()  # more models timed in the same process (vanilla LLaMA or MoR)

    def validate(self) -> DecodeBenchSpec:
        check_int("--num-requests", self.num_requests, 1)
        check_int("--batch", self.batch, 1)
        check_int("--repeats", self.repeats, 1)
        check_seed("--seed", self.seed)
        check_device("--device", self.device)
        if self.breakdown and self.device != "cpu":
            raise DepthmuxError("--breakdown times the parts with host clocks: CPU only (drop it with --device cuda)")
        for name, (lo, hi) in (("--prompt-len", self.prompt_len), ("--output-len", self.output_len)):
            check_int(name, lo, 1)
            check_int(name, hi, lo)
        b = self.kv_budget_mib
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not 0 < b <= MAX_KV_BUDGET_MIB:
            raise DepthmuxError(f"--kv-budget-mib must be a number in (0, {MAX_KV_BUDGET_MIB}], got {b!r}")
        return self

    def check_budget_fits(self, specs: dict[str, KVSpec], workload: list[BenchRequest], max_len: int) -> None:
        """The budget holds the workload's longest request alone for every KV kind (before any timing)."""
        budget = int(self.kv_budget_mib * 2**20)
        longest = min(max(len(r.prompt) + r.max_new_tokens for r in workload), max_len)
        for name, spec in specs.items():
            need = spec.reservation_bytes(longest)
            if need > budget:
                raise DepthmuxError(
                    f"--kv-budget-mib {self.kv_budget_mib:g} cannot hold one request of {longest} tokens with "
                    f"{name} KV (it needs {need / 2**20:.3g} MiB)"
                )


MAX_KV_BUDGET_MIB = UNLIMITED_KV_BYTES // 2**20
"""The largest budget the engine accepts (16 TiB), in MiB."""


@dataclass
class BenchRequest:
    prompt: list[int]
    max_new_tokens: int


def make_workload(spec: DecodeBenchSpec, tokenizer, vocab_size: int) -> list[BenchRequest]:
    """The seeded workload: lengths uniform in the spec's ranges; prompts are windows of the corpus
    (random ids in [3, vocab) without a tokenizer)."""
    rng = random.Random(spec.seed)
    stream: list[int] = []
    if tokenizer is not None:
        for doc in load_corpus(spec.corpus):
            stream += tokenizer(doc)["input_ids"]
            if len(stream) > 20 * spec.prompt_len[1]:
                break
    out = []
    for _ in range(spec.num_requests):
        p, o = rng.randint(*spec.prompt_len), rng.randint(*spec.output_len)
        if len(stream) > p:
            start = rng.randrange(len(stream) - p)
            prompt = stream[start : start + p]
        else:
            prompt = [rng.randrange(3, vocab_size) for _ in range(p)]
        out.append(BenchRequest(prompt, o))
    return out


def _summary(tokens: int, seconds: float, latencies: list[float]) -> dict[str, float]:
    lat = sorted(latencies)
    return {
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "latency_median_s": statistics.median(lat),
        "latency_p95_s": lat[min(len(lat) - 1, int(0.95 * len(lat)))],
    }


@torch.no_grad()
def run_hf_static(model, workload: list[BenchRequest], batch: int, pad_id: int) -> dict[str, Any]:
    """transformers ``generate`` in static batches of ``batch`` requests (left padding, greedy)."""
    from transformers import GenerationConfig

    device = next(model.parameters()).device
    t0 = time.perf_counter()
    latencies, tokens = [], 0
    for i in range(0, len(workload), batch):
        group = workload[i : i + batch]
        width = max(len(r.prompt) for r in group)
        ids = torch.tensor([[pad_id] * (width - len(r.prompt)) + r.prompt for r in group], device=device)
        mask = torch.tensor([[0] * (width - len(r.prompt)) + [1] * len(r.prompt) for r in group], device=device)
        n = max(r.max_new_tokens for r in group)
        gen = GenerationConfig(
            max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=pad_id, eos_token_id=None
        )
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=gen)
        if out.shape[1] - width != n:
            raise DepthmuxError(f"generate returned {out.shape[1] - width} tokens instead of {n}")
        tokens += sum(r.max_new_tokens for r in group)
        latencies += [time.perf_counter() - t0] * len(group)
    return _summary(tokens, time.perf_counter() - t0, latencies)


def make_engine(model: RecursiveForCausalLM, policy: str, batch: int, kv_budget_bytes: int | None = None) -> LLM:
    return LLM(
        model,
        depth_policy=policy,
        max_batch_items=batch,
        max_num_seqs=batch,
        max_prefill_tokens=512,
        kv_budget_bytes=kv_budget_bytes,
    )


@torch.no_grad()
def run_engine(
    model: RecursiveForCausalLM, workload: list[BenchRequest], policy: str, batch: int, flops: FlopCounter | None = None
) -> tuple[dict[str, Any], LLM]:
    """Every request submitted at once, stepped until done; returns the summary and the engine.
    With ``flops``, the models' declared FLOPs are counted into it during the run."""
    llm = make_engine(model, policy, batch)
    with flops if flops is not None else contextlib.nullcontext():
        return _drive(llm, workload), llm


def _drive(llm: LLM, workload: list[BenchRequest]) -> dict[str, Any]:
    t0 = time.perf_counter()
    ids = [
        llm.add_request(r.prompt, SamplingParams(max_new_tokens=r.max_new_tokens, ignore_eos=True)) for r in workload
    ]
    done: dict[str, float] = {}
    while llm.has_unfinished_requests():
        for out in llm.step():
            if out.finished:
                done[out.request_id] = time.perf_counter() - t0
    seconds = time.perf_counter() - t0
    tokens = sum(len(llm.output(i).token_ids) for i in ids)
    return _summary(tokens, seconds, [done[i] for i in ids])


def counts(llm: LLM, fc: FlopCounter, summary: dict[str, Any]) -> dict[str, Any]:
    """What a depth-wise run counted: FLOPs per generated token, depth, KV entries written."""
    s = llm.stats
    return {
        "flops_per_generated_token": fc.flops / summary["tokens"],
        "average_depth": s.average_depth(),
        "exits_by_depth": list(s.exits_by_depth),  # prefill and decode tokens
        "decode_average_depth": s.average_depth(decode_only=True),
        "decode_exits_by_depth": list(s.decode_exits_by_depth),
        "tokens_entered": s.prefill_tokens + s.decode_tokens,
        "kv_entries_written": s.kv_entries_written,
        "kv_page_bytes_peak": s.kv_bytes_peak,  # pages held at most (whole pages, all pools)
        "kv_tensor_bytes_allocated": llm.kv.allocated_bytes(),  # K/V tensors allocated (at most the budget)
        "generated_tokens": summary["tokens"],
    }


def kv_memory(
    vanilla: RecursiveForCausalLM,
    mor: RecursiveForCausalLM,
    workload: list[BenchRequest],
    batch: int,
    budget_bytes: int,
    counted: dict[str, dict],
) -> dict[str, Any]:
    """KV bytes per cached token (measured) and sequences admitted under ``budget_bytes`` for vanilla,
    recursion-wise MoR and MoR with recursive KV sharing (the MoR weights served with ``mor_kv="share_first"``)."""
    shared_cfg = copy.deepcopy(mor.config)
    shared_cfg.mor_kv = "share_first"
    shared = RecursiveForCausalLM(shared_cfg).eval()
    shared.load_state_dict(mor.state_dict())
    fc = FlopCounter()
    summary, llm = run_engine(shared, workload[:8], "depthwise", batch, flops=fc)
    counted = {**counted, "shared": counts(llm, fc, summary)}
    models = {"vanilla": vanilla, "recursion_wise": mor, "shared": shared}
    n = mor.config.num_recursions
    expected = {"vanilla": 1.0, "recursion_wise": (n + 1) / (2 * n), "shared": 1.0 / n}
    out: dict[str, Any] = {"budget_bytes": budget_bytes}
    vanilla_bytes = None
    for name, model in models.items():
        spec = KVSpec.from_config(model.config)
        c = counted["vanilla" if name == "vanilla" else "mor" if name == "recursion_wise" else "shared"]
        per_token = c["kv_entries_written"] * spec.entry_bytes / c["tokens_entered"]
        block_layers = spec.num_layers - spec.num_main_layers if spec.recursion_loop else 0
        block_entries = c["kv_entries_written"] - spec.num_main_layers * c["tokens_entered"]
        measured_ratio = block_entries / (block_layers * c["tokens_entered"]) if block_layers else 1.0
        vanilla_bytes = vanilla_bytes or per_token
        out[name] = {
            "kv_bytes_per_token": per_token,
            "over_vanilla": per_token / vanilla_bytes,
            "block_ratio_measured": measured_ratio,
            "block_ratio_expected_spec4": expected[name],
            "block_ratio_reserved": spec.block_ratio(),
            "admitted_sequences": admitted_sequences(model, workload, budget_bytes, batch),
        }
    return out


def admitted_sequences(model: RecursiveForCausalLM, workload: list[BenchRequest], budget_bytes: int, batch: int) -> int:
    """How many sequences the scheduler admits at once under ``budget_bytes`` when the workload's requests,
    repeated in order, are all waiting: the scheduler's own admission rule (:func:`admitted_count`),
    computed from the reservations without queueing one request per admitted sequence."""
    spec = KVSpec.from_config(model.config)
    max_len = int(model.config.max_position_embeddings)
    reservations = [spec.reservation_bytes(min(len(r.prompt) + r.max_new_tokens, max_len)) for r in workload]
    return admitted_count(reservations, budget_bytes)


@contextlib.contextmanager
def _timers(buckets: dict[str, float]):
    """Wrap the engine's parts with wall-clock timers (CPU: synchronous, so wall time is the cost)."""
    from depthmux.engine import kv_manager, runner, scheduler
    from depthmux.recursion import layers, modeling

    targets = [
        (kv_manager.PagedLayerKV, "append", "kv_paging"),
        (kv_manager.PagedLayerKV, "view", "kv_paging"),
        (kv_manager.KVManager, "binding", "kv_paging"),
        (layers.Attention, "forward", "attention"),
        (layers.MLP, "forward", "mlp"),
        (modeling.RecursiveModel, "route", "router"),
        (modeling.RecursiveModel, "run_block", "shared_block"),
        (RecursiveForCausalLM, "logits", "lm_head"),
        (scheduler.Scheduler, "schedule", "scheduler"),
        (scheduler.Scheduler, "update", "scheduler"),
        (runner.ModelRunner, "execute", "runner_total"),
    ]
    depth = defaultdict(int)
    saved = []

    def wrap(fn, bucket):
        def timed(*a, **k):
            depth[bucket] += 1
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                depth[bucket] -= 1
                if depth[bucket] == 0:
                    buckets[bucket] += time.perf_counter() - t

        return timed

    for cls, name, bucket in targets:
        fn = cls.__dict__[name]
        saved.append((cls, name, fn))
        setattr(cls, name, wrap(fn, bucket))
    try:
        yield
    finally:
        for cls, name, fn in saved:
            setattr(cls, name, fn)


def time_breakdown(
    model: RecursiveForCausalLM, workload: list[BenchRequest], policy: str, batch: int
) -> dict[str, float]:
    """Seconds spent in attention (projections, KV paging and SDPA; ``kv_paging`` is the part that
    gathers and scatters pages and builds page tables), MLPs, routers, the LM head, the scheduler, and
    the rest of the runner (tensor building, gathers, sampling, Python), over one engine run;
    ``shared_block`` is the time inside ``run_block`` (the recursion block; every middle layer of a
    vanilla model), overlapping attention and MLP. Timers add some overhead."""
    buckets: dict[str, float] = defaultdict(float)
    with _timers(buckets):
        summary, _ = run_engine(model, workload, policy, batch)
    total = summary["seconds"]
    runner_total = buckets.pop("runner_total")
    parts = {
        k: buckets.get(k, 0.0)
        for k in ("attention", "kv_paging", "mlp", "shared_block", "router", "lm_head", "scheduler")
    }
    parts["runner_other"] = runner_total - parts["attention"] - parts["mlp"] - parts["router"] - parts["lm_head"]
    parts["engine_other"] = total - runner_total - parts["scheduler"]
    return {"seconds": total, **{k: round(v, 4) for k, v in parts.items()}}


def _load(path: str, what: str, hint: str):
    try:
        model_dir = pretrained_model_dir(path)
    except DepthmuxError as e:
        raise DepthmuxError(f"{what} {path!r}: {e}{hint}") from None
    return load_lm(model_dir).eval(), load_saved_tokenizer(model_dir)


@dataclass
class BenchModels:
    """What :func:`load_bench_models` gives: the vanilla model as transformers (``hf_vanilla``, for HF
    static batching) and converted (``vanilla``), the MoR model, the tokenizer, the seeded workload and the
    context both models share."""

    hf_vanilla: Any
    vanilla: RecursiveForCausalLM
    mor: RecursiveForCausalLM
    tokenizer: Any
    workload: list[BenchRequest]
    context: int
    also: dict[str, tuple[Any, RecursiveForCausalLM]] = field(default_factory=dict)  # name -> (HF side, engine side)

    def kv_configs(self) -> dict[str, Any]:
        """Vanilla, recursion-wise MoR and the same MoR weights served with recursive KV sharing."""
        shared_cfg = copy.deepcopy(self.mor.config)
        shared_cfg.mor_kv = "share_first"
        return {"vanilla": self.vanilla.config, "recursion-wise": self.mor.config, "shared": shared_cfg}


def load_bench_models(spec: DecodeBenchSpec, log=print) -> BenchModels:
    """Load and check both models, build the workload (one-line errors before any timing)."""
    spec.validate()
    torch.manual_seed(spec.seed)
    hint = "" if spec.mor_model != DEFAULT_MOR_DIR else " (create it with `depthmux lm build-mor`)"
    if not Path(spec.mor_model).exists() and spec.mor_model != "smollm2":
        raise DepthmuxError(f"no MoR model at {spec.mor_model}{hint or ': give --mor-model'}")
    vanilla_lm, tokenizer = _load(spec.model, "--model", "")
    mor_lm, mor_tok = _load(spec.mor_model, "--mor-model", hint)
    vanilla_lm, mor_lm = vanilla_lm.to(spec.device), mor_lm.to(spec.device)  # the engine runs where the model is
    if not isinstance(mor_lm, RecursiveForCausalLM) or not mor_lm.model.recursion_loop:
        raise DepthmuxError(f"--mor-model {spec.mor_model} is not a recursive model with a recursion loop")
    hf_vanilla = vanilla_lm.model if isinstance(vanilla_lm, HFCausalLMAdapter) else vanilla_lm
    vanilla = as_recursive_model(hf_vanilla).eval()
    context = min(int(vanilla.config.max_position_embeddings), int(mor_lm.config.max_position_embeddings))
    if spec.prompt_len[1] > context:
        raise DepthmuxError(
            f"--prompt-len up to {spec.prompt_len[1]} tokens is longer than the models' context of {context} tokens"
        )
    if vanilla.config.num_hidden_layers != mor_lm.config.num_hidden_layers:
        log(f"note: effective depths differ ({vanilla.config.num_hidden_layers} vs {mor_lm.config.num_hidden_layers})")
    also = {}
    for i, path in enumerate(spec.also, 1):
        lm, _ = _load(path, "--also", "")
        hf = (lm.model if isinstance(lm, HFCausalLMAdapter) else lm).to(spec.device)
        rec = as_recursive_model(hf).eval()
        if rec.config.vocab_size != vanilla.config.vocab_size:
            raise DepthmuxError(
                f"--also {path}: vocabulary {rec.config.vocab_size} differs from --model's {vanilla.config.vocab_size}"
            )
        context = min(context, int(rec.config.max_position_embeddings))
        also[f"also{i}"] = (hf, rec)
    if spec.prompt_len[1] > context:
        raise DepthmuxError(
            f"--prompt-len up to {spec.prompt_len[1]} tokens is longer than the models' context of {context} tokens"
        )
    vocab = min(vanilla.config.vocab_size, mor_lm.config.vocab_size)
    workload = make_workload(spec, tokenizer or mor_tok, vocab)
    return BenchModels(hf_vanilla, vanilla, mor_lm, tokenizer, workload, context, also)


def run_decode_bench(spec: DecodeBenchSpec, log=print, progress: bool = True) -> dict[str, Any]:
    """Measure every configuration (module docstring); returns the JSON-ready result. ``progress``: a bar
    with ETA over the runs (stderr; it is updated between runs, never inside a timed one)."""
    bm = load_bench_models(spec, log)
    hf_vanilla, vanilla, mor_lm, tokenizer, workload, context = (
        bm.hf_vanilla,
        bm.vanilla,
        bm.mor,
        bm.tokenizer,
        bm.workload,
        bm.context,
    )
    kv_specs = {k: KVSpec.from_config(c) for k, c in bm.kv_configs().items()}
    kv_specs.update({k: KVSpec.from_config(rec.config) for k, (_, rec) in bm.also.items()})
    spec.check_budget_fits(kv_specs, workload, context)
    pad = tokenizer.pad_token_id if tokenizer is not None and tokenizer.pad_token_id is not None else 0
    models = {"vanilla": (hf_vanilla, vanilla), "mor": (mor_lm, mor_lm), **bm.also}
    log(
        f"workload: {len(workload)} requests, prompts {spec.prompt_len[0]}-{spec.prompt_len[1]} tokens "
        f"(mean {statistics.mean(len(r.prompt) for r in workload):.0f}), outputs {spec.output_len[0]}-"
        f"{spec.output_len[1]} (mean {statistics.mean(r.max_new_tokens for r in workload):.0f}), B = {spec.batch}, "
        f"{torch.get_num_threads()} threads"
    )
    runs_total = (
        spec.repeats * len(models) * len(CONFIGS) + len(models) + 1 + (2 * len(models) if spec.breakdown else 0)
    )
    bar = progress_bar(runs_total, "bench-decode", "run", progress)
    log = log_above(bar, log)
    warm = [BenchRequest(r.prompt[:8], 2) for r in workload[:2]]
    for hf, rec in models.values():  # warm-up: two short requests through every timed path
        run_hf_static(hf, warm, spec.batch, pad)
        for config in CONFIGS[1:]:
            run_engine(rec, warm, config.removeprefix("engine_"), spec.batch)
    counted: dict[str, dict] = {}
    runs: dict[str, list[dict]] = defaultdict(list)
    for rep in range(spec.repeats):
        for name, (hf, rec) in models.items():
            for config in CONFIGS:
                if config == "hf_static":
                    res = run_hf_static(hf, workload, spec.batch, pad)
                else:
                    res, _ = run_engine(rec, workload, config.removeprefix("engine_"), spec.batch)
                runs[f"{name}/{config}"].append(res)
                bar.update()
                log(
                    f"rep {rep + 1}: {name:8s} {config:17s} {res['tokens_per_s']:8.1f} tokens/s, latency median "
                    f"{res['latency_median_s']:.2f} s, p95 {res['latency_p95_s']:.2f} s"
                )
    for name, (_, rec) in models.items():  # FLOPs counted in a separate, untimed run (counting slows it)
        fc = FlopCounter()
        res, llm = run_engine(rec, workload, "depthwise", spec.batch, flops=fc)
        counted[name] = counts(llm, fc, res)
        bar.update()
        log(
            f"{name}: {counted[name]['flops_per_generated_token'] / 1e9:.3f} GFLOP per generated "
            f"token, average depth {counted[name]['average_depth']:.3f}"
        )
    configs = {}
    for key, rs in runs.items():
        configs[key] = {
            k: statistics.median(r[k] for r in rs)
            for k in ("tokens_per_s", "latency_median_s", "latency_p95_s", "seconds")
        }
        configs[key]["tokens_per_s_runs"] = [r["tokens_per_s"] for r in rs]
    tps = {k: v["tokens_per_s"] for k, v in configs.items()}
    ceiling = counted["vanilla"]["flops_per_generated_token"] / counted["mor"]["flops_per_generated_token"]
    result: dict[str, Any] = {
        "spec": asdict(spec),
        "threads": torch.get_num_threads(),
        "workload": {
            "requests": len(workload),
            "prompt_tokens": sum(len(r.prompt) for r in workload),
            "generated_tokens": sum(r.max_new_tokens for r in workload),
        },
        "configs": configs,
        "counts": counted,
        "average_depth": counted["mor"]["average_depth"],
        "num_recursions": mor_lm.config.num_recursions,
        "compute_ceiling": ceiling,
        "fraction_of_ceiling": tps["mor/engine_depthwise"] / tps["vanilla/engine_depthwise"] / ceiling,
        "speedup_vs_hf_static": tps["vanilla/engine_depthwise"] / tps["vanilla/hf_static"],
        "depthwise_over_lockstep": {m: tps[f"{m}/engine_depthwise"] / tps[f"{m}/engine_lockstep"] for m in models},
        "mor_over_vanilla": {c: tps[f"mor/{c}"] / tps[f"vanilla/{c}"] for c in CONFIGS},
    }
    if bm.also:
        result["also"] = dict(zip(bm.also, spec.also, strict=True))
        result["over_vanilla"] = {
            m: {c: tps[f"{m}/{c}"] / tps[f"vanilla/{c}"] for c in CONFIGS} for m in ["mor", *bm.also]
        }
    budget = int(spec.kv_budget_mib * 2**20)
    result["kv"] = kv_memory(vanilla, mor_lm, workload, spec.batch, budget, counted)
    bar.update()
    if spec.breakdown:
        result["breakdown"] = {}
        for name, (_, rec) in models.items():
            for p in ("lockstep", "depthwise"):
                result["breakdown"][f"{name}/engine_{p}"] = time_breakdown(rec, workload, p, spec.batch)
                bar.update()
    bar.close()
    return result


def quick_spec(spec: DecodeBenchSpec) -> DecodeBenchSpec:
    """The ``--quick`` version of ``spec`` (:data:`QUICK`)."""
    return replace(spec, **QUICK)
