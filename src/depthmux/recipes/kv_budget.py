"""``depthmux lm bench-kv``: does the KV budget hold? (SPEC 5, issue "engine core" item 3).

The ``bench-decode`` workload (:func:`~depthmux.recipes.decode_bench.make_workload`, every request
submitted at once, greedy, EOS ignored) is decoded by the engine (depth-wise policy, B items per
block call, no cap on running sequences but the budget) under each KV budget, for three kinds of KV:
vanilla (SmolLM2), recursion-wise MoR and the same MoR weights served with recursive KV sharing.
Each cell reports what was measured in that run:

* ``tensor_bytes``: K/V tensor bytes the engine allocated (its one arena; must be <= the budget);
* ``peak_page_bytes``: bytes of the pages requests held at most (whole pages, all pools);
* ``max_running`` / ``mean_running``: sequences running at once, at most / on average over the
  steps (what the budget really admits, with admission at the measured routing fractions);
* ``admission_rule``: what the admission rule alone would admit from the queue at the spec's
  expected fractions (:func:`~depthmux.engine.admitted_count`; the README's old figure);
* ``preemptions``, finish reasons, tokens/s (one run, not a timing benchmark);
* ``identical``: every output equals the same kind's output under the largest budget (greedy: a
  preempted and recomputed request must not change).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any

from depthmux.engine import LLM, KVSpec, SamplingParams, admitted_count
from depthmux.errors import DepthmuxError
from depthmux.recipes.decode_bench import MAX_KV_BUDGET_MIB, BenchRequest, DecodeBenchSpec, load_bench_models
from depthmux.recursion import RecursiveForCausalLM
from depthmux.utils.progress import log_above, progress_bar

MAX_RUNNING = 4096
"""Running sequences are limited by the budget only (this cap is never reached here)."""


@dataclass
class KVBudgetSpec:
    """The workload (as ``bench-decode``) and the budgets (MiB) to run it under."""

    bench: DecodeBenchSpec
    budgets_mib: tuple[float, ...] = (64.0, 128.0, 256.0)

    def validate(self) -> KVBudgetSpec:
        self.bench.validate()
        if not self.budgets_mib:
            raise DepthmuxError("--kv-budgets-mib needs at least one budget")
        for b in self.budgets_mib:
            if isinstance(b, bool) or not isinstance(b, (int, float)) or not 0 < b <= MAX_KV_BUDGET_MIB:
                raise DepthmuxError(f"--kv-budgets-mib must hold numbers in (0, {MAX_KV_BUDGET_MIB}], got {b!r}")
        if len(set(self.budgets_mib)) != len(self.budgets_mib):
            raise DepthmuxError(f"--kv-budgets-mib repeats a budget: {list(self.budgets_mib)}")
        return self


def run_under_budget(
    model: RecursiveForCausalLM, workload: list[BenchRequest], batch: int, budget_bytes: int
) -> tuple[dict[str, Any], list[list[int]]]:
    """One engine run of the whole workload under ``budget_bytes``; returns the cell and the outputs."""
    llm = LLM(
        model,
        depth_policy="depthwise",
        max_batch_items=batch,
        max_num_seqs=MAX_RUNNING,
        max_prefill_tokens=512,
        kv_budget_bytes=budget_bytes,
    )
    t0 = time.perf_counter()
    ids = [
        llm.add_request(r.prompt, SamplingParams(max_new_tokens=r.max_new_tokens, ignore_eos=True)) for r in workload
    ]
    running_sum, steps, reasons = 0, 0, {}
    while llm.has_unfinished_requests():
        for out in llm.step():
            if out.finished:
                reasons[out.finish_reason] = reasons.get(out.finish_reason, 0) + 1
        running_sum += len(llm.core.scheduler.running)
        steps += 1
    seconds = time.perf_counter() - t0
    outputs = [llm.output(i).token_ids for i in ids]
    s = llm.stats
    cell = {
        "budget_bytes": budget_bytes,
        "tensor_bytes": s.kv_tensor_bytes,
        "peak_page_bytes": s.kv_bytes_peak,
        "within_budget": s.kv_tensor_bytes <= budget_bytes and s.kv_bytes_peak <= budget_bytes,
        "max_running": s.max_running,
        "mean_running": running_sum / max(1, steps),
        "preemptions": s.preemptions,
        "finish_reasons": reasons,
        "tokens_per_s": sum(len(o) for o in outputs) / seconds,
        "measured_stream_fractions": list(llm.kv.stream_fractions()),
        "kv_pages_at_end": llm.kv.pages_in_use(),
    }
    return cell, outputs


def run_kv_budget_table(spec: KVBudgetSpec, log=print, progress: bool = True) -> dict[str, Any]:
    """Every (KV kind, budget) cell (module docstring); returns the JSON-ready result. ``progress``: a bar
    with ETA over the runs (stderr)."""
    spec.validate()
    bm = load_bench_models(spec.bench, log)
    workload, batch = bm.workload, spec.bench.batch
    shared = RecursiveForCausalLM(copy.deepcopy(bm.kv_configs()["shared"])).eval().to(spec.bench.device)
    shared.load_state_dict(bm.mor.state_dict())
    models = {"vanilla": bm.vanilla, "recursion-wise": bm.mor, "shared": shared}
    budgets = sorted(spec.budgets_mib, reverse=True)
    longest = min(max(len(r.prompt) + r.max_new_tokens for r in workload), bm.context)
    for name, model in models.items():  # every budget must hold the longest request alone: checked first
        need = KVSpec.from_config(model.config).reservation_bytes(longest)
        if need > int(min(budgets) * 2**20):
            raise DepthmuxError(
                f"--kv-budgets-mib {min(budgets):g} cannot hold one request of {longest} tokens with {name} KV "
                f"(it needs {need / 2**20:.3g} MiB)"
            )
    table: dict[str, dict[str, Any]] = {}
    with progress_bar(len(models) * len(budgets), "bench-kv", "run", progress) as bar:
        log = log_above(bar, log)
        for name, model in models.items():
            reference = None
            kv_spec = KVSpec.from_config(model.config)
            reservations = [
                kv_spec.reservation_bytes(min(len(r.prompt) + r.max_new_tokens, bm.context)) for r in workload
            ]
            for mib in budgets:
                budget = int(mib * 2**20)
                cell, outputs = run_under_budget(model, workload, batch, budget)
                reference = reference or outputs
                cell["identical_to_largest_budget"] = outputs == reference
                cell["admission_rule"] = admitted_count(reservations, budget)
                table.setdefault(name, {})[f"{mib:g}"] = cell
                log(
                    f"{name:15s} {mib:6g} MiB: tensors {cell['tensor_bytes'] / 2**20:7.1f} MiB, pages peak "
                    f"{cell['peak_page_bytes'] / 2**20:7.1f} MiB, running max {cell['max_running']} (mean "
                    f"{cell['mean_running']:.1f}), preemptions {cell['preemptions']}, {cell['finish_reasons']}"
                )
                bar.update(1)
    return {
        "spec": {"budgets_mib": list(budgets), "batch": batch, "requests": len(workload), "seed": spec.bench.seed},
        "workload": {
            "requests": len(workload),
            "prompt_tokens": sum(len(r.prompt) for r in workload),
            "generated_tokens": sum(r.max_new_tokens for r in workload),
        },
        "table": table,
        "all_within_budget": all(c["within_budget"] for cells in table.values() for c in cells.values()),
    }
