"""Issue 17's serving measurements ("What it must show" 2, 3, 4) as one bounded driver: one JSON, markdown
tables and a PNG.

    # the real run (a quiet machine with >= 2 cores; estimated 12-18 minutes, not yet run)
    python scripts/serve_measure.py --teacher runs/sst2/teacher --mux runs/sst2/n2-l0-reversible/best \\
        --mux runs/sst2/n4-l0-reversible/best --task sst2 --data-dir ../shared/data/glue --lm smollm2 \\
        --max-minutes 22 --out runs/serve_measure
    # the tiny-model check of the driver itself (tests/test_serve_measure.py)
    python scripts/serve_measure.py --quick --teacher T --mux N2 --task tweets --lm TINY_LLAMA --out DIR

Phases (``--phases``, any subset, in this order):

* ``classify``: offline ``mux bench`` speed of each ``--mux`` checkpoint against its teacher path
  (:func:`depthmux.recipes.mux.benchmark_checkpoint`, in this process, one torch thread, pinned to core 0),
  then one ``depthmux serve --threads 1`` with the teacher and every ``--mux`` checkpoint (pinned to core 0
  with ``taskset -c 0``; each ``serve bench`` client on core 1), single-input requests of the same dev
  texts the offline bench times (the first ``--offline-samples``, in turn), interleaved rounds (teacher,
  N = 2, N = 4, teacher, ...): inputs/s at concurrency 64 and p50/p95 latency at concurrency 1 and 64.
  Served speedup = mean inputs/s / the served teacher's; reported as a fraction of the offline speedup
  (target >= 0.85).
* ``maxwait``: the last ``--mux`` checkpoint alone at concurrency 64 for each ``--max-wait-ms`` value (one
  server each): throughput and p95 latency against max-wait (``serve_maxwait.png``).
* ``generate``: ``lm bench-decode``'s workload (``--gen-workload``, default its ``--quick`` version) through
  ``depthmux serve --model LM --max-num-seqs B`` at concurrency B (B = the workload's batch), streamed and
  not, against in-process ``LLM.generate`` of the same workload with the same engine settings (one thread,
  core 0), interleaved rounds (tokens/s ratio, target >= 0.9); TTFT / TPOT at three Poisson rates (fractions
  of the sustained request rate); the same workload through ``depthmux serve hf-baseline`` (transformers
  ``generate`` per request, one at a time, same HTTP stack).
* ``overload``: the last classifier with ``--max-queued 32`` under Poisson arrivals at 4x its sustainable
  rate (its served c = 64 inputs/s from ``classify``, else measured at c = 32 first), then (with ``--lm``)
  ``serve --model LM --max-queued 32`` under the generation workload at 4x its sustained streamed request
  rate (from ``generate``, else measured first): 503 latency p99 (target < 0.1 s), every admitted request
  finished, the server's RSS sampled from /proc during the load, ``/health`` and a normal request afterwards.

Every server listens on 127.0.0.1 on a free port and is stopped at the end, on an error or on Ctrl-C; every
client run is bounded by a request count, a duration and a timeout; ``--max-minutes`` bounds the whole run
(phases that would start after it are recorded as skipped). The commands run are printed and kept in the JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PHASES = ("classify", "maxwait", "generate", "overload")
CLIENT_CORE, SERVER_CORE = 1, 0


def _can_pin() -> bool:
    return shutil.which("taskset") is not None and len(os.sched_getaffinity(0)) >= 2


class Run:
    """Shared state: options, the output folder, the commands run, the servers alive, the deadline."""

    def __init__(self, args) -> None:
        self.args = args
        self.out = Path(args.out)
        self.logs = self.out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.commands: list[str] = []
        self.servers: list[Server] = []
        self.pin = _can_pin()
        self.deadline = time.monotonic() + 60 * args.max_minutes
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        self.env["PYTHONPATH"] = os.pathsep.join(
            p for p in [str(Path(__file__).resolve().parents[1] / "src"), os.environ.get("PYTHONPATH", "")] if p
        )

    def pinned(self, cmd: list[str], core: int) -> list[str]:
        return ["taskset", "-c", str(core), *cmd] if self.pin else cmd

    def note(self, cmd: list[str] | str) -> None:
        line = cmd if isinstance(cmd, str) else " ".join(cmd)
        self.commands.append(line)
        print(f"$ {line}", flush=True)

    def time_left(self) -> float:
        return self.deadline - time.monotonic()

    def stop_all(self) -> None:
        for s in list(self.servers):
            s.stop()


class OutOfTime(Exception):
    """--max-minutes ran out inside a phase: the rest of it is skipped."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``depthmux serve [SUB] ARGS --port P --threads 1`` pinned to the server core; waits for /health."""

    def __init__(self, run: Run, args: list[str], label: str, sub: tuple[str, ...] = ()) -> None:
        from depthmux.serve import wait_until_healthy

        self.run, self.port = run, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "depthmux", "serve", *sub, "--port", str(self.port), "--threads", "1", *args]
        cmd = run.pinned(cmd, SERVER_CORE)
        run.note(cmd)
        self.log_path = run.logs / f"{label}.log"
        self.log = open(self.log_path, "w")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=run.env)
        run.servers.append(self)
        why = wait_until_healthy(self.url, self.proc, run.args.server_start_timeout)
        if why is not None:
            self.stop()
            raise RuntimeError(f"{label} {why}: {self.log_path.read_text()[-1500:]}")

    def rss_mib(self) -> float | None:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    def histogram_mean(self, name: str, model: str) -> tuple[float, float]:
        """(sum, count) of a ``/metrics`` histogram for one model (0, 0 when absent)."""
        import httpx

        total = count = 0.0
        for line in httpx.get(self.url + "/metrics", timeout=10).text.splitlines():
            if f'model_name="{model}"' not in line or line.startswith("#"):
                continue
            key, value = line.rsplit(" ", 1)
            if key.startswith(name + "_sum"):
                total = float(value)
            elif key.startswith(name + "_count"):
                count = float(value)
        return total, count

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self.log.closed:
            self.log.close()
        if self in self.run.servers:
            self.run.servers.remove(self)


def classify_bench(
    run: Run, url: str, model: str, texts: str, load: tuple[str, str], requests: int, warmup: int, **kw
) -> dict:
    """A ``serve bench --endpoint classify`` run: ``load`` = ("--concurrency", C) or ("--rate", R)."""
    opts = ("--endpoint", "classify", *load, "--num-requests", str(requests), "--inputs-file", texts)
    return bench(run, url, model, *opts, "--warmup", str(warmup), **kw)


def bench(run: Run, url: str, model: str, *opts: str, duration: float | None = None) -> dict:
    """One ``depthmux serve bench`` client (pinned to the client core); its JSON report."""
    if run.time_left() <= 0:
        raise OutOfTime
    duration = duration if duration is not None else run.args.bench_duration
    fd, path = tempfile.mkstemp(suffix=".json", dir=run.logs)
    os.close(fd)
    os.unlink(path)  # serve bench --out refuses an existing file
    cmd = [
        sys.executable,
        "-m",
        "depthmux",
        "serve",
        "bench",
        "--url",
        url,
        "--model",
        model,
        "--duration",
        f"{duration:g}",
        "--timeout",
        f"{run.args.request_timeout:g}",
        *opts,
        "--out",
        path,
    ]
    cmd = run.pinned(cmd, CLIENT_CORE)
    run.note(cmd)
    limit = max(10.0, min(duration + run.args.request_timeout + 120, run.time_left() + 60))
    subprocess.run(cmd, env=run.env, stdout=subprocess.DEVNULL, timeout=limit, check=True)
    report = json.loads(Path(path).read_text())
    Path(path).unlink()
    return report


@contextlib.contextmanager
def _pinned_here(run: Run, core: int):
    """This process on one core (restored afterwards)."""
    old = os.sched_getaffinity(0)
    if run.pin:
        os.sched_setaffinity(0, {core})
    try:
        yield
    finally:
        os.sched_setaffinity(0, old)


def _lat(report: dict, key: str = "e2e_latency_s") -> dict:
    s = report.get(key) or {}
    return {"p50": s.get("median"), "p95": s.get("p95"), "p99": s.get("p99")}


# ---------------------------------------------------------------- classify


def inputs_file(run: Run) -> Path:
    from depthmux.data import load_task

    path = run.logs / "inputs.txt"
    if not path.exists():
        texts = load_task(run.args.task, "dev", run.args.data_dir).texts[: run.args.offline_samples]
        lines = [" ".join(t.split()) if isinstance(t, str) else " ".join(" ".join(x.split()) for x in t) for t in texts]
        path.write_text("\n".join(ln for ln in lines if ln) + "\n")
    return path


def offline(run: Run) -> dict:
    import torch

    from depthmux.recipes.mux import MuxBenchConfig, benchmark_checkpoint

    a = run.args
    torch.set_num_threads(1)
    out = {}
    for ckpt in a.mux:
        run.note(
            f"(in process) depthmux mux bench --checkpoint {ckpt} --task {a.task}"
            + (f" --data-dir {a.data_dir}" if a.data_dir else "")
            + f" --samples {a.offline_samples} --batch-size 64 --repetitions {a.offline_repetitions} --threads 1"
        )
        with _pinned_here(run, SERVER_CORE):
            r = benchmark_checkpoint(
                MuxBenchConfig(
                    checkpoint=ckpt,
                    task=a.task,
                    data_dir=a.data_dir,
                    samples=a.offline_samples,
                    batch_size=64,
                    repetitions=a.offline_repetitions,
                ),
                progress=False,
            )
        name = f"n{r.n}"
        if name in out:
            raise SystemExit(f"error: two --mux checkpoints with N = {r.n}")
        out[name] = {"checkpoint": ckpt, **r.as_dict()}
        print(
            f"offline {name}: teacher {r.teacher_samples_per_s:.1f}, mux {r.mux_samples_per_s:.1f} samples/s, "
            f"speedup {r.speedup:.2f}x",
            flush=True,
        )
    return out


def classify(run: Run, res: dict) -> None:
    a = run.args
    off = offline(run)
    res["classify"] = {"offline": off}
    names = {"teacher": a.teacher, **{n: v["checkpoint"] for n, v in off.items()}}
    args = [x for n, d in names.items() for x in ("--classifier", f"{n}={d}")]
    args += ["--max-batch", "64", "--max-wait-ms", f"{a.classify_max_wait_ms:g}", "--max-queued", "1024"]
    server = Server(run, args, "classify-server")
    texts = str(inputs_file(run))
    rounds: dict[str, list[dict]] = {n: [] for n in names}
    try:
        for rnd in range(a.rounds):
            for name in names:
                s0, c0 = server.histogram_mean("depthmux:classify_forward_inputs", name)
                c64 = classify_bench(run, server.url, name, texts, ("--concurrency", "64"), a.c64_requests, a.warmup)
                s1, c1n = server.histogram_mean("depthmux:classify_forward_inputs", name)
                c1 = classify_bench(run, server.url, name, texts, ("--concurrency", "1"), a.c1_requests, a.warmup)
                rounds[name].append(
                    {
                        "c64_inputs_per_s": c64["inputs_per_s"],
                        "c64_latency_s": _lat(c64),
                        "c64_errors": c64["errors_by_status"],
                        "c64_completed": c64["completed"],
                        "c64_mean_forward_inputs": (s1 - s0) / (c1n - c0) if c1n > c0 else None,
                        "c1_inputs_per_s": c1["inputs_per_s"],
                        "c1_latency_s": _lat(c1),
                        "c1_errors": c1["errors_by_status"],
                    }
                )
                print(
                    f"round {rnd + 1} {name}: c=64 {c64['inputs_per_s']:.1f} inputs/s, "
                    f"c=1 p50 {c1['e2e_latency_s']['median']:.3f} s",
                    flush=True,
                )
    finally:
        server.stop()
    summary = {}
    teacher = statistics.fmean(r["c64_inputs_per_s"] for r in rounds["teacher"])
    for name, rs in rounds.items():
        mean = statistics.fmean(r["c64_inputs_per_s"] for r in rs)
        row = {
            "c64_inputs_per_s_rounds": [r["c64_inputs_per_s"] for r in rs],
            "c64_inputs_per_s": mean,
            "c64_p50_s": statistics.median(r["c64_latency_s"]["p50"] for r in rs),
            "c64_p95_s": statistics.median(r["c64_latency_s"]["p95"] for r in rs),
            "c1_p50_s": statistics.median(r["c1_latency_s"]["p50"] for r in rs),
            "c1_p95_s": statistics.median(r["c1_latency_s"]["p95"] for r in rs),
            "served_speedup": mean / teacher,
        }
        if name in off:
            row["offline_speedup"] = off[name]["speedup"]
            row["fraction_of_offline_speedup"] = row["served_speedup"] / off[name]["speedup"]
            row["meets_target_0.85"] = row["fraction_of_offline_speedup"] >= 0.85
        summary[name] = row
    res["classify"] |= {"rounds": rounds, "summary": summary}


# ---------------------------------------------------------------- maxwait


def maxwait(run: Run, res: dict) -> None:
    a = run.args
    ckpt = a.mux[-1]
    texts = str(inputs_file(run))
    points = []
    for w in a.max_wait_ms:
        server = Server(
            run,
            ["--classifier", f"m={ckpt}", "--max-batch", "64", "--max-wait-ms", f"{w:g}", "--max-queued", "1024"],
            f"maxwait-{w:g}",
        )
        try:
            r = classify_bench(run, server.url, "m", texts, ("--concurrency", "64"), a.c64_requests, a.warmup)
            fs, fc = server.histogram_mean("depthmux:classify_forward_inputs", "m")
        finally:
            server.stop()
        points.append(
            {
                "max_wait_ms": w,
                "inputs_per_s": r["inputs_per_s"],
                "p50_s": _lat(r)["p50"],
                "p95_s": _lat(r)["p95"],
                "errors": r["errors_by_status"],
                "mean_forward_inputs": fs / fc if fc else None,
            }
        )
        print(f"max-wait {w:g} ms: {r['inputs_per_s']:.1f} inputs/s, p95 {_lat(r)['p95']:.3f} s", flush=True)
    res["maxwait"] = {"checkpoint": ckpt, "concurrency": 64, "points": points}
    plot_maxwait(run, points)


def plot_maxwait(run: Run, points: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w = [p["max_wait_ms"] for p in points]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(w, [p["inputs_per_s"] for p in points], "o-", color="tab:blue")
    ax.set_xlabel("--max-wait-ms")
    ax.set_ylabel("inputs/s (c = 64)", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(w, [p["p95_s"] for p in points], "s--", color="tab:red")
    ax2.set_ylabel("p95 latency (s)", color="tab:red")
    ax.set_title(f"{'/'.join(Path(run.args.mux[-1]).parts[-2:])}: c = 64, throughput and p95 vs max-wait", fontsize=9)
    fig.tight_layout()
    fig.savefig(run.out / "serve_maxwait.png", dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------- generate


def in_process(run: Run, engine, workload) -> dict:
    from depthmux.engine import SamplingParams

    prompts = [p for p, _ in workload]
    params = [SamplingParams(max_new_tokens=n, ignore_eos=True) for _, n in workload]
    with _pinned_here(run, SERVER_CORE):
        t0 = time.perf_counter()
        outs = engine.generate(prompts, params)
        seconds = time.perf_counter() - t0
    tokens = sum(len(o.token_ids) for o in outs)
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds}


def generate(run: Run, res: dict) -> None:
    import torch

    from depthmux.engine import LLM, SamplingParams
    from depthmux.recipes.decode_bench import QUICK, DecodeBenchSpec
    from depthmux.serve.bench import decode_workload

    a = run.args
    workload = decode_workload(a.gen_workload, a.lm)
    batch = QUICK["batch"] if a.gen_workload == "decode-quick" else DecodeBenchSpec().batch
    n = len(workload)
    wl = ["--endpoint", "completions", "--workload", a.gen_workload, "--tokenizer", a.lm, "--warmup", str(a.warmup)]
    torch.set_num_threads(1)
    run.note(
        f"(in process) LLM.from_pretrained({a.lm!r}, max_num_seqs={batch}).generate(<the {n} workload prompts>, "
        "SamplingParams(max_new_tokens=<its output length>, ignore_eos=True))"
    )
    engine = LLM.from_pretrained(a.lm, max_num_seqs=batch)
    engine.generate([p[:8] for p, _ in workload[:2]], SamplingParams(max_new_tokens=2, ignore_eos=True))  # warm-up
    server = Server(
        run,
        ["--model", a.lm, "--model-name", "lm", "--max-num-seqs", str(batch), "--max-queued", "1024"],
        "generate-server",
    )
    rounds = []
    try:
        for _ in range(a.rounds):
            local = in_process(run, engine, workload)
            plain = bench(
                run, server.url, "lm", *wl, "--concurrency", str(batch), "--num-requests", str(n), "--no-stream"
            )
            streamed = bench(run, server.url, "lm", *wl, "--concurrency", str(batch), "--num-requests", str(n))
            rounds.append({"in_process": local, "server": _gen(plain), "server_streamed": _gen(streamed)})
            print(
                f"in-process {local['tokens_per_s']:.1f} tokens/s, server {plain['output_token_throughput']:.1f}, "
                f"streamed {streamed['output_token_throughput']:.1f}",
                flush=True,
            )
        sustained = statistics.fmean(r["server_streamed"]["request_throughput"] for r in rounds)
        rates = []
        for frac in a.rate_fractions:
            rate = frac * sustained
            r = bench(
                run,
                server.url,
                "lm",
                *wl,
                "--rate",
                f"{rate:.6g}",
                "--num-requests",
                str(n * a.rate_cycles),
                duration=max(a.bench_duration, 3 * n * a.rate_cycles / rate),
            )
            rates.append({"fraction_of_sustained": frac, **_gen(r)})
            print(
                f"rate {rate:.2f}/s: TTFT p50 {_lat(r, 'ttft_s')['p50']}, TPOT p50 {_lat(r, 'tpot_s')['p50']}",
                flush=True,
            )
    finally:
        server.stop()
    del engine
    base = Server(run, ["--model", a.lm, "--model-name", "lm"], "hf-baseline", sub=("hf-baseline",))
    try:
        hf = [
            _gen(bench(run, base.url, "lm", *wl, "--concurrency", str(batch), "--num-requests", str(n), "--no-stream"))
            for _ in range(a.rounds)
        ]
    finally:
        base.stop()
    local = statistics.fmean(r["in_process"]["tokens_per_s"] for r in rounds)
    served = statistics.fmean(r["server"]["output_token_throughput"] for r in rounds)
    streamed = statistics.fmean(r["server_streamed"]["output_token_throughput"] for r in rounds)
    hf_tps = statistics.fmean(r["output_token_throughput"] for r in hf)
    res["generate"] = {
        "workload": {
            "name": a.gen_workload,
            "requests": n,
            "generated_tokens": sum(k for _, k in workload),
            "concurrency": batch,
        },
        "rounds": rounds,
        "rates": {"sustained_request_rate": sustained, "points": rates},
        "hf_baseline": hf,
        "summary": {
            "in_process_tokens_per_s": local,
            "server_tokens_per_s": served,
            "server_streamed_tokens_per_s": streamed,
            "server_over_in_process": served / local,
            "server_streamed_over_in_process": streamed / local,
            "meets_target_0.9": served / local >= 0.9,
            "hf_baseline_tokens_per_s": hf_tps,
            "server_over_hf_baseline": served / hf_tps,
        },
    }


def _gen(r: dict) -> dict:
    return {
        "completed": r["completed"],
        "requests": r["requests"],
        "errors": r["errors_by_status"],
        "request_throughput": r["request_throughput"],
        "output_token_throughput": r["output_token_throughput"],
        "e2e_s": _lat(r),
        "ttft_s": _lat(r, "ttft_s"),
        "tpot_s": _lat(r, "tpot_s"),
    }


# ---------------------------------------------------------------- overload


def overload(run: Run, res: dict) -> None:
    """Classification (the last classifier) and, with ``--lm``, completions (bench-decode's workload)."""
    a = run.args
    res["overload"] = {}
    ckpt = a.mux[-1] if a.mux else a.teacher
    if ckpt:
        texts = str(inputs_file(run))
        args = ["--classifier", f"m={ckpt}", "--max-batch", "64", "--max-queued", "32"]
        server = Server(run, args, "overload-server")
        try:
            known = res.get("classify", {})
            if a.mux and "summary" in known:  # the same checkpoint's served c = 64 rate from the classify phase
                name = list(known["offline"])[-1]
                rate, source = known["summary"][name]["c64_inputs_per_s"], f"classify phase, {name} at c = 64"
            else:
                probe = classify_bench(run, server.url, "m", texts, ("--concurrency", "32"), a.c64_requests, a.warmup)
                rate, source = probe["inputs_per_s"], "measured here at c = 32 (--max-queued 32)"
            load = ("--endpoint", "classify", "--inputs-file", texts)
            normal = ("/v1/classify", {"model": "m", "input": "a normal request"})
            res["overload"]["classify"] = {"checkpoint": ckpt, **_overload_run(run, server, load, rate, source, normal)}
        finally:
            server.stop()
    if a.lm:
        from depthmux.recipes.decode_bench import QUICK, DecodeBenchSpec

        batch = QUICK["batch"] if a.gen_workload == "decode-quick" else DecodeBenchSpec().batch
        args = ["--model", a.lm, "--model-name", "lm", "--max-num-seqs", str(batch), "--max-queued", "32"]
        server = Server(run, args, "overload-lm-server")
        load = ("--endpoint", "completions", "--workload", a.gen_workload, "--tokenizer", a.lm)
        try:
            known = res.get("generate", {}).get("rates", {})
            if "sustained_request_rate" in known:
                rate, source = known["sustained_request_rate"], f"generate phase, streamed at c = {batch}"
            else:
                probe = bench(run, server.url, "lm", *load, "--concurrency", str(batch), "--num-requests", str(batch))
                rate, source = probe["request_throughput"], f"measured here, streamed at c = {batch}"
            normal = ("/v1/completions", {"model": "lm", "prompt": "Hello", "max_tokens": 4, "temperature": 0})
            res["overload"]["completions"] = {"model": a.lm, **_overload_run(run, server, load, rate, source, normal)}
        finally:
            server.stop()


def _overload_run(run: Run, server: Server, load: tuple[str, ...], rate: float, source: str, normal) -> dict:
    """Poisson arrivals at 4x ``rate`` for ``--overload-seconds`` against ``server`` (``--max-queued 32``):
    503s and their latency, whether every admitted request finished, the server's RSS during the load,
    ``/health`` and one ``normal`` (path, body) request afterwards."""
    import httpx

    a = run.args
    target = 4 * rate
    rss_before = server.rss_mib()
    samples: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            v = server.rss_mib()
            if v is not None:
                samples.append(v)
            stop.wait(0.25)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        requests = math.ceil(target * a.overload_seconds) + 1
        opts = (*load, "--rate", f"{target:.6g}", "--num-requests", str(requests), "--warmup", "0")
        r = bench(run, server.url, "m" if "classify" in load else "lm", *opts, duration=a.overload_seconds)
    finally:
        stop.set()
        t.join()
    time.sleep(1.0)
    health = httpx.get(server.url + "/health", timeout=10).status_code
    t0 = time.perf_counter()
    after = httpx.post(server.url + normal[0], json=normal[1], timeout=60)
    after_s = time.perf_counter() - t0
    rss_after = server.rss_mib()
    errors = r["errors_by_status"]
    lat503 = (r.get("error_latency_s") or {}).get("503") or {}
    unfinished = sum(v for k, v in errors.items() if k != "503")
    print(f"overload {load[1]}: {errors}, 503 p99 {lat503.get('p99')}, RSS max {max(samples or [0])} MiB", flush=True)
    return {
        "sustainable_rate": rate,
        "sustainable_source": source,
        "offered_rate": target,
        "max_queued": 32,
        "requests": r["requests"],
        "completed": r["completed"],
        "rejected_503": errors.get("503", 0),
        "other_errors": {k: v for k, v in errors.items() if k != "503"},
        "admitted_all_finished": unfinished == 0,
        "latency_503_s": {"p50": lat503.get("median"), "p99": lat503.get("p99")},
        "meets_target_503_p99_under_0.1s": bool(lat503) and lat503["p99"] < 0.1,
        "admitted_latency_s": _lat(r),
        "rss_mib": {
            "before": rss_before,
            "max_during": max(samples) if samples else None,
            "after": rss_after,
            "samples": len(samples),
        },
        "health_after": health,
        "normal_request_after": {"status": after.status_code, "seconds": after_s},
    }


# ---------------------------------------------------------------- report


def _f(x, d: int = 2) -> str:
    return "-" if x is None else f"{x:.{d}f}"


def markdown(res: dict) -> str:
    lines = [f"# serve_measure ({res['started']}; pinned: {res['pinned']}; quick: {res['quick']})", ""]
    if "classify" in res:
        lines += [
            "## Classification (single-input requests)",
            "",
            "| model | offline speedup | c=64 inputs/s (rounds) | served speedup | fraction of offline | "
            "c=64 p50/p95 (s) | c=1 p50/p95 (s) |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, s in res["classify"]["summary"].items():
            rounds = ", ".join(_f(x, 1) for x in s["c64_inputs_per_s_rounds"])
            lines.append(
                f"| {name} | {_f(s.get('offline_speedup'))} | {rounds} | {_f(s['served_speedup'])} | "
                f"{_f(s.get('fraction_of_offline_speedup'))} | {_f(s['c64_p50_s'], 3)} / "
                f"{_f(s['c64_p95_s'], 3)} | {_f(s['c1_p50_s'], 3)} / {_f(s['c1_p95_s'], 3)} |"
            )
        lines.append("")
    if "maxwait" in res:
        lines += [
            "## --max-wait-ms (c = 64)",
            "",
            "| max-wait (ms) | inputs/s | p95 (s) | mean forward inputs |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {p['max_wait_ms']:g} | {_f(p['inputs_per_s'], 1)} | {_f(p['p95_s'], 3)} | "
            f"{_f(p['mean_forward_inputs'], 1)} |"
            for p in res["maxwait"]["points"]
        ]
        lines.append("")
    if "generate" in res:
        g, s = res["generate"], res["generate"]["summary"]
        lines += [
            f"## Generation ({g['workload']['name']}: {g['workload']['requests']} requests, "
            f"{g['workload']['generated_tokens']} tokens, concurrency {g['workload']['concurrency']})",
            "",
            "| path | tokens/s | vs in-process |",
            "|---|---|---|",
            f"| in-process LLM.generate | {_f(s['in_process_tokens_per_s'], 1)} | 1 |",
            f"| server (no stream) | {_f(s['server_tokens_per_s'], 1)} | {_f(s['server_over_in_process'])} |",
            f"| server (streamed) | {_f(s['server_streamed_tokens_per_s'], 1)} | "
            f"{_f(s['server_streamed_over_in_process'])} |",
            f"| hf-baseline (generate per request) | {_f(s['hf_baseline_tokens_per_s'], 1)} | "
            f"{_f(s['hf_baseline_tokens_per_s'] / s['in_process_tokens_per_s'])} |",
            "",
            "| Poisson rate (req/s) | TTFT p50/p95 (s) | TPOT p50/p95 (s) | e2e p50/p95 (s) |",
            "|---|---|---|---|",
        ]
        sus = g["rates"]["sustained_request_rate"]
        for p in g["rates"]["points"]:
            lines.append(
                f"| {_f(p['fraction_of_sustained'] * sus)} | {_f(p['ttft_s']['p50'], 3)} / "
                f"{_f(p['ttft_s']['p95'], 3)} | {_f(p['tpot_s']['p50'], 4)} / {_f(p['tpot_s']['p95'], 4)} | "
                f"{_f(p['e2e_s']['p50'], 3)} / {_f(p['e2e_s']['p95'], 3)} |"
            )
        lines.append("")
    if "overload" in res:
        lines += ["## Overload (--max-queued 32, Poisson arrivals at 4x the sustainable rate)", ""]
        for what, o in res["overload"].items():
            lines += [
                f"**{what}**: offered {_f(o['offered_rate'], 2)} requests/s (4x {_f(o['sustainable_rate'], 2)}, "
                f"{o['sustainable_source']}): {o['requests']} requests, {o['completed']} completed, "
                f"{o['rejected_503']} got 503 (p50 {_f(o['latency_503_s']['p50'], 4)} s, p99 "
                f"{_f(o['latency_503_s']['p99'], 4)} s), other errors {o['other_errors']}; admitted p50/p99 "
                f"{_f(o['admitted_latency_s']['p50'], 3)} / {_f(o['admitted_latency_s']['p99'], 3)} s; RSS "
                f"{_f(o['rss_mib']['before'], 0)} -> max {_f(o['rss_mib']['max_during'], 0)} -> "
                f"{_f(o['rss_mib']['after'], 0)} MiB; /health after: {o['health_after']}, a normal request after: "
                f"{o['normal_request_after']['status']} in {_f(o['normal_request_after']['seconds'], 3)} s",
                "",
            ]
    if res.get("skipped"):
        lines += [f"Skipped: {res['skipped']}", ""]
    lines += ["## Commands", "", "```", *res["commands"], "```", ""]
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (serve_measure.json/.md, serve_maxwait.png, logs/)")
    p.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated subset of {','.join(PHASES)}")
    p.add_argument("--teacher", help="teacher checkpoint folder (classify)")
    p.add_argument("--mux", action="append", default=[], help="RevMUX checkpoint folder, repeatable (N=2, then N=4)")
    p.add_argument("--task", default="sst2", help="task whose dev texts are sent (sst2 needs --data-dir)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--lm", default="smollm2", help="language model for generate: 'smollm2' or a LLaMA folder")
    p.add_argument("--gen-workload", default="decode-quick", choices=["decode-quick", "decode"])
    p.add_argument("--quick", action="store_true", help="scale every count down (the tiny-model test)")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds (>= 2)")
    p.add_argument("--offline-samples", type=int, default=256)
    p.add_argument("--offline-repetitions", type=int, default=3)
    p.add_argument("--c64-requests", type=int, default=640)
    p.add_argument("--c1-requests", type=int, default=48)
    p.add_argument("--classify-max-wait-ms", type=float, default=10.0)
    p.add_argument("--max-wait-ms", type=float, nargs="+", default=[0.0, 5.0, 20.0, 50.0])
    p.add_argument("--rate-fractions", type=float, nargs=3, default=[0.25, 0.5, 0.9])
    p.add_argument("--rate-cycles", type=int, default=2, help="workload passes per Poisson rate")
    p.add_argument("--overload-seconds", type=float, default=20.0)
    p.add_argument("--warmup", type=int, default=5, help="warm-up requests of every client run (not counted)")
    p.add_argument("--bench-duration", type=float, default=180.0, help="duration bound of one client run (s)")
    p.add_argument("--request-timeout", type=float, default=120.0)
    p.add_argument("--server-start-timeout", type=float, default=300.0)
    p.add_argument("--max-minutes", type=float, default=30.0, help="no phase starts after this")
    a = p.parse_args(argv)
    if a.quick:
        a.offline_samples, a.offline_repetitions, a.c64_requests, a.c1_requests = 64, 1, 96, 8
        a.max_wait_ms, a.rate_cycles, a.overload_seconds, a.warmup = [0.0, 20.0], 1, 3.0, 2
        a.gen_workload, a.bench_duration, a.request_timeout = "decode-quick", 60.0, 60.0
    phases = [x.strip() for x in a.phases.split(",") if x.strip()]
    bad = [x for x in phases if x not in PHASES]
    if bad or not phases:
        p.error(f"--phases: unknown {bad}; choose from {PHASES}")
    a.phases = [x for x in PHASES if x in phases]
    if a.rounds < 2:
        p.error("--rounds must be >= 2 (interleaved)")
    if {"classify", "maxwait"} & set(a.phases) and not a.mux:
        p.error("classify / maxwait need --mux (and classify --teacher)")
    if "classify" in a.phases and not a.teacher:
        p.error("classify needs --teacher")
    if "overload" in a.phases and not (a.mux or a.teacher):
        p.error("overload needs --mux or --teacher")
    for d in [a.teacher, *a.mux]:
        if d and not Path(d).is_dir():
            p.error(f"no such checkpoint folder: {d}")
    if (Path(a.out) / "serve_measure.json").exists():
        p.error(f"{a.out}/serve_measure.json exists: choose another --out")
    return a


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM: stop the servers in main's finally, as Ctrl-C does


def main(argv=None) -> int:
    a = parse_args(argv)
    run = Run(a)
    res: dict = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "pinned": run.pin,
        "quick": a.quick,
        "cores": len(os.sched_getaffinity(0)),
        "load_average_start": os.getloadavg(),
        "skipped": {},
    }
    signal.signal(signal.SIGTERM, _interrupt)
    t0 = time.monotonic()
    try:
        for phase in a.phases:
            if run.time_left() <= 0:
                res["skipped"][phase] = "--max-minutes reached"
                continue
            t = time.monotonic()
            try:
                {"classify": classify, "maxwait": maxwait, "generate": generate, "overload": overload}[phase](run, res)
            except OutOfTime:
                res["skipped"][phase] = "--max-minutes reached inside the phase (its partial results are dropped)"
                res.pop(phase, None)
                continue
            res.setdefault("phase_seconds", {})[phase] = time.monotonic() - t
    except KeyboardInterrupt:
        res["interrupted"] = True
        print("interrupted: stopping the servers", file=sys.stderr, flush=True)
    finally:
        run.stop_all()
        res["commands"] = run.commands
        res["seconds"] = time.monotonic() - t0
        res["load_average_end"] = os.getloadavg()
        (run.out / "serve_measure.json").write_text(json.dumps(res, indent=2) + "\n")
        try:
            text = markdown(res)
        except (KeyError, TypeError, ZeroDivisionError) as e:  # a phase that failed half-way
            text = f"(no tables: a phase did not finish: {e!r})\n\n```\n" + "\n".join(run.commands) + "\n```\n"
        (run.out / "serve_measure.md").write_text(text)
        print(f"wrote {run.out / 'serve_measure.json'} and serve_measure.md ({res['seconds']:.0f} s)", flush=True)
    return 130 if res.get("interrupted") else 0


if __name__ == "__main__":
    sys.exit(main())
