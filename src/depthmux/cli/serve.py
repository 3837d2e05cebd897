"""``depthmux serve``: an OpenAI-compatible server (completions, chat, RevMUX classification with dynamic
grouping) and ``depthmux serve bench``, a load generator against a running server (SPEC 5b).

Thin: options go into :class:`depthmux.serve.ServeConfig` / :class:`depthmux.serve.BenchConfig`, whose
``validate()`` refuses a bad value with one line before any model loads.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="Serve models over HTTP (OpenAI-compatible) and load-test a running server.",
    invoke_without_command=True,
)


@app.callback()
def serve(
    ctx: typer.Context,
    model: Annotated[
        str | None,
        typer.Option(
            help="Language model: 'smollm2' (packaged) or a folder (LLaMA family, recursive / MoR run, early exit)."
        ),
    ] = None,
    model_name: Annotated[str | None, typer.Option(help="Name clients use for --model (default: its name).")] = None,
    exit_threshold: Annotated[
        float | None,
        typer.Option(help="Early-exit --model (from 'ee train'): FREE exit when confidence > T, T in [0, 1]."),
    ] = None,
    speculative: Annotated[
        int | None,
        typer.Option(help="Early-exit --model: self-speculative decoding with K >= 1 drafts (deep greedy's output)."),
    ] = None,
    classifier: Annotated[
        list[str] | None,
        typer.Option(help="NAME=DIR: a RevMUX (or teacher) checkpoint served on /v1/classify; repeatable."),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on (loopback unless --allow-remote).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    max_queued: Annotated[
        int, typer.Option(help="Waiting requests (generation) / inputs (per classifier) before 503 + Retry-After.")
    ] = 256,
    max_batch: Annotated[int, typer.Option(help="Most classification inputs per forward (whole groups of N).")] = 64,
    max_wait_ms: Annotated[
        float, typer.Option(help="How long a classification input waits for its group of N to fill.")
    ] = 10.0,
    max_num_seqs: Annotated[int, typer.Option(help="Generation requests the engine runs at once.")] = 64,
    kv_budget_mb: Annotated[float | None, typer.Option(help="KV-cache budget of the engine in MiB.")] = None,
    allow_remote: Annotated[bool, typer.Option(help="Allow a non-loopback --host (there is no authentication).")] = (
        False
    ),
    threads: Annotated[
        int | None, typer.Option(help="torch CPU threads, 1 to 4x the cores (at most 1024); default: torch's choice.")
    ] = None,
    device: Annotated[str, typer.Option(help="Where the models run: cpu, cuda or cuda:N.")] = "cpu",
    ray: Annotated[
        bool,
        typer.Option(
            "--ray",
            help="Host on Ray Serve: replicas behind Ray's proxy, grouping by @serve.batch "
            "(joins RAY_ADDRESS if set, else starts a local Ray on 127.0.0.1).",
        ),
    ] = False,
    replicas: Annotated[int, typer.Option(help="--ray: replicas (the minimum with --max-replicas).")] = 1,
    max_replicas: Annotated[
        int | None, typer.Option(help="--ray: autoscale up to this many replicas (target: --target-ongoing each).")
    ] = None,
    target_ongoing: Annotated[float, typer.Option(help="--ray: the autoscaler's requests per replica.")] = 16.0,
    max_ongoing: Annotated[
        int | None, typer.Option(help="--ray: requests one replica holds (default: max(--max-batch, --max-num-seqs)).")
    ] = None,
    cpus_per_replica: Annotated[float, typer.Option(help="--ray: CPUs per replica (its torch threads).")] = 1.0,
) -> None:
    """Start the server: /v1/completions, /v1/chat/completions, /v1/classify, /v1/models, /health, /metrics."""
    if ctx.invoked_subcommand is not None:
        return
    from depthmux.serve import ServeConfig, parse_classifiers, run_server
    from depthmux.utils.checks import check_float, check_threads

    check_threads("--threads", threads)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    engine_kwargs = {}
    if kv_budget_mb is not None:
        check_float("--kv-budget-mb", kv_budget_mb, 0.0, low_open=True)
        engine_kwargs["kv_budget_bytes"] = int(kv_budget_mb * 2**20)
    cfg = ServeConfig(
        model=model,
        model_name=model_name,
        classifiers=parse_classifiers(classifier or []),
        host=host,
        port=port,
        max_queued=max_queued,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        max_num_seqs=max_num_seqs,
        engine_kwargs=engine_kwargs,
        exit_threshold=exit_threshold,
        speculative=speculative,
        allow_remote=allow_remote,
        device=device,
    ).validate()

    if ray:
        from depthmux.serve.ray_app import RayServeOptions, run_ray_server

        opts = RayServeOptions(
            replicas=replicas,
            max_replicas=max_replicas,
            target_ongoing_requests=target_ongoing,
            max_ongoing_requests=max_ongoing,
            cpus_per_replica=cpus_per_replica,
        ).validate()

        def ray_ready(url: str) -> None:
            print(f"serving on {url} with Ray Serve (Ctrl-C stops)", file=sys.stderr, flush=True)

        run_ray_server(cfg, opts, on_ready=ray_ready)
        return

    def ready(serving) -> None:
        names = [m["id"] for m in serving.models()["data"]]
        print(f"serving {', '.join(names)} on http://{host}:{port} (Ctrl-C stops)", file=sys.stderr, flush=True)

    run_server(cfg, on_ready=ready)


@app.command()
def bench(
    url: Annotated[str, typer.Option(help="The server, e.g. http://127.0.0.1:8000 (loopback only).")],
    model: Annotated[str, typer.Option(help="Model name to send (see /v1/models).")],
    endpoint: Annotated[str, typer.Option(help="completions | chat | classify.")] = "completions",
    rate: Annotated[
        float | None, typer.Option(help="Poisson arrivals at this many requests/s (instead of --concurrency).")
    ] = None,
    concurrency: Annotated[int, typer.Option(help="Requests kept in flight (without --rate).")] = 8,
    num_requests: Annotated[int, typer.Option(help="Stop after this many requests.")] = 100,
    duration: Annotated[float, typer.Option(help="... or after this many seconds, whichever first.")] = 60.0,
    max_tokens: Annotated[int, typer.Option(help="max_tokens of each generation request.")] = 32,
    prompt: Annotated[str, typer.Option(help="Prompt text (or classification input) of every request.")] = (
        "The quick brown fox"
    ),
    inputs_file: Annotated[
        Path | None, typer.Option(help="A text file: one prompt / classification input per line, used in turn.")
    ] = None,
    inputs_per_request: Annotated[int, typer.Option(help="Classification inputs per request.")] = 1,
    seed: Annotated[int, typer.Option(help="Seed of the arrival times.")] = 0,
    timeout: Annotated[float, typer.Option(help="Seconds before one request counts as failed.")] = 120.0,
    warmup: Annotated[
        int, typer.Option(help="Requests sent first, one at a time, and left out of the statistics.")
    ] = 3,
    workload: Annotated[
        str | None,
        typer.Option(
            help="decode | decode-quick: `lm bench-decode`'s seeded workload (/ --quick) as token-id prompts, "
            "max_tokens = its output lengths, ignore_eos, greedy (--endpoint completions)."
        ),
    ] = None,
    tokenizer: Annotated[
        str, typer.Option(help="--workload: the model ('smollm2' or a folder) whose tokenizer makes the prompts.")
    ] = "smollm2",
    stream: Annotated[
        bool, typer.Option(help="Stream generation requests (TTFT, TPOT, ITL); --no-stream: plain requests.")
    ] = True,
    out: Annotated[
        Path | None, typer.Option(help="Write the JSON report here too (a file; checked before the run).")
    ] = None,
) -> None:
    """Load-test a running server: throughput, TTFT, TPOT, ITL and end-to-end latency (median, p95, p99),
    errors by status; for classify, inputs/s and latency. Prints JSON."""
    from depthmux.serve import BenchConfig, run_bench
    from depthmux.utils.checks import check_output_file

    if out is not None:
        check_output_file("--out", out)
    cfg = BenchConfig(
        url=url,
        model=model,
        endpoint=endpoint,
        rate=rate,
        concurrency=concurrency,
        num_requests=num_requests,
        duration_s=duration,
        max_tokens=max_tokens,
        prompt=prompt,
        inputs_file=str(inputs_file) if inputs_file else None,
        inputs_per_request=inputs_per_request,
        seed=seed,
        timeout_s=timeout,
        warmup=warmup,
        workload=workload,
        tokenizer=tokenizer,
        stream=stream,
    )
    report = run_bench(cfg)
    text = json.dumps(report, indent=2)
    if out is not None:
        out.write_text(text + "\n")
    print(text)


@app.command("hf-baseline")
def hf_baseline(
    model: Annotated[str, typer.Option(help="'smollm2' (packaged) or a LLaMA-family folder.")],
    model_name: Annotated[str | None, typer.Option(help="Name clients use for --model (default: its name).")] = None,
    host: Annotated[str, typer.Option(help="Loopback address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8001,
    threads: Annotated[
        int | None, typer.Option(help="torch CPU threads, 1 to 4x the cores (at most 1024); default: torch's choice.")
    ] = None,
) -> None:
    """The baseline a user would otherwise write: transformers generate once per request, one request at a
    time, behind the same HTTP stack (POST /v1/completions, greedy, no streaming; /health, /v1/models)."""
    from depthmux.serve.hf_baseline import run_hf_baseline
    from depthmux.utils.checks import check_threads

    check_threads("--threads", threads)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)

    def ready(baseline) -> None:
        print(
            f"hf-baseline serving {baseline.name} on http://{host}:{port} (Ctrl-C stops)", file=sys.stderr, flush=True
        )

    run_hf_baseline(model, host, port, model_name, on_ready=ready)
