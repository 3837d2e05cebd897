"""``depthmux serve bench``: an asyncio load generator against a running server on loopback (SPEC 5b,
after vLLM's serving benchmark; our own code).

Arrivals are Poisson at ``rate`` requests/s (seeded), or ``concurrency`` requests are kept in flight.
It stops by itself: after ``num_requests`` requests or ``duration_s`` seconds of sending, whichever comes
first, and each request gives up after ``timeout_s``. Generation requests stream (with
``include_usage``): TTFT = time to the first chunk with text, ITL = gaps between chunks with text,
TPOT = (latency - TTFT) / (output tokens - 1), e2e = the whole request. Classification: latency per
request and inputs/s. Every failure is counted by HTTP status ("timeout", "connection" otherwise), with the
latency of the failed requests by status (how fast a 503 comes back under overload).

``warmup`` requests are sent first, one at a time, and left out of every statistic (a cold server's
first requests pay for lazy initialisation). ``workload="decode"`` / ``"decode-quick"`` sends the
seeded workload of ``depthmux lm bench-decode`` (/ ``--quick``), built by
:func:`depthmux.recipes.decode_bench.make_workload` with ``tokenizer``'s tokenizer: token-id prompts,
``max_tokens`` = each request's output length, ``ignore_eos``, greedy; request i is workload[i mod size].
``stream=False`` sends plain requests (tokens from ``usage``; no TTFT).
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import statistics
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from depthmux.errors import DepthmuxError, require
from depthmux.serve.server import LOOPBACK
from depthmux.utils.checks import check_float, check_int, check_seed

ENDPOINTS = {"completions": "/v1/completions", "chat": "/v1/chat/completions", "classify": "/v1/classify"}


@dataclass
class BenchConfig:
    url: str
    model: str
    endpoint: str = "completions"
    rate: float | None = None  # Poisson arrivals per second; None: fixed concurrency
    concurrency: int = 8
    num_requests: int = 100
    duration_s: float = 60.0
    max_tokens: int = 32
    prompt: str = "The quick brown fox"
    inputs_file: str | None = None
    inputs_per_request: int = 1
    seed: int = 0
    timeout_s: float = 120.0
    warmup: int = 3
    workload: str | None = None  # "decode" | "decode-quick": bench-decode's seeded workload (completions)
    tokenizer: str = "smollm2"  # whose tokenizer makes the workload's prompts ("smollm2" or a model folder)
    stream: bool = True
    inputs: list[str] = field(default_factory=list, repr=False)  # filled by validate()
    requests: list[tuple[list[int], int]] = field(default_factory=list, repr=False)  # (prompt ids, max_tokens)

    def validate(self) -> BenchConfig:
        parsed = urlparse(self.url)
        require(parsed.scheme == "http" and parsed.hostname, f"--url must be http://HOST:PORT, got {self.url!r}")
        require(parsed.hostname in LOOPBACK, f"--url must be a loopback address, got {parsed.hostname!r}")
        require(self.endpoint in ENDPOINTS, f"--endpoint must be one of {list(ENDPOINTS)}, got {self.endpoint!r}")
        check_float("--rate", self.rate, 0.0, low_open=True, allow_none=True)
        check_int("--concurrency", self.concurrency, 1)
        check_int("--num-requests", self.num_requests, 1)
        check_float("--duration", self.duration_s, 0.0, low_open=True)
        check_int("--max-tokens", self.max_tokens, 1)
        check_int("--inputs-per-request", self.inputs_per_request, 1)
        check_seed("--seed", self.seed)
        check_float("--timeout", self.timeout_s, 0.0, low_open=True)
        check_int("--warmup", self.warmup, 0)
        if self.workload is not None:
            require(self.workload in WORKLOADS, f"--workload must be one of {list(WORKLOADS)}, got {self.workload!r}")
            require(self.endpoint == "completions", "--workload is a generation workload: --endpoint completions")
            require(self.inputs_file is None, "--workload and --inputs-file exclude each other")
            self.requests = decode_workload(self.workload, self.tokenizer)
        if self.inputs_file is not None:
            path = Path(self.inputs_file)
            require(path.is_file(), f"--inputs-file not found: {path}")
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError as e:
                raise DepthmuxError(
                    f"--inputs-file {path} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start})"
                ) from None
            except OSError as e:
                raise DepthmuxError(f"cannot read --inputs-file {path}: {e.strerror or e}") from None
            require("\x00" not in text, f"--inputs-file {path} is binary, not text (it holds NUL bytes)")
            self.inputs = [ln for ln in text.splitlines() if ln.strip()]
            require(self.inputs, f"{path}: no non-blank lines")
        else:
            require(self.prompt.strip() != "", "--prompt must not be blank")
            self.inputs = [self.prompt]
        return self


WORKLOADS = ("decode", "decode-quick")


def decode_workload(name: str, tokenizer: str, seed: int = 0) -> list[tuple[list[int], int]]:
    """``[(prompt ids, output length), ...]``: ``lm bench-decode``'s workload (``"decode-quick"``: its
    ``--quick`` version) with the tokenizer of ``tokenizer`` ("smollm2" or a model folder)."""
    from depthmux.lm import load_saved_tokenizer, pretrained_model_dir
    from depthmux.recipes.decode_bench import DecodeBenchSpec, make_workload, quick_spec

    spec = DecodeBenchSpec(seed=seed)
    if name == "decode-quick":
        spec = quick_spec(spec)
    tok = load_saved_tokenizer(pretrained_model_dir(tokenizer))
    return [(r.prompt, r.max_new_tokens) for r in make_workload(spec.validate(), tok, len(tok) if tok else 32000)]


def summary(values: list[float]) -> dict | None:
    """mean, median, p95, p99 (nearest-rank) of ``values``; None when empty."""
    if not values:
        return None
    s = sorted(values)

    def rank(q: float) -> float:
        return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]

    return {"mean": statistics.fmean(s), "median": statistics.median(s), "p95": rank(0.95), "p99": rank(0.99)}


@dataclass
class _Result:
    ok: bool
    status: str
    latency: float
    ttft: float | None = None
    itl: list[float] = field(default_factory=list)
    output_tokens: int = 0
    inputs: int = 0


async def _one(client, cfg: BenchConfig, i: int) -> _Result:
    path = ENDPOINTS[cfg.endpoint]
    text = cfg.inputs[i % len(cfg.inputs)]
    max_tokens = cfg.max_tokens
    if cfg.requests:
        ids, max_tokens = cfg.requests[i % len(cfg.requests)]
        body = {"model": cfg.model, "prompt": ids, "ignore_eos": True}
    elif cfg.endpoint == "classify":
        k = cfg.inputs_per_request
        body = {"model": cfg.model, "input": [cfg.inputs[(i * k + j) % len(cfg.inputs)] for j in range(k)]}
    elif cfg.endpoint == "chat":
        body = {"model": cfg.model, "messages": [{"role": "user", "content": text}]}
    else:
        body = {"model": cfg.model, "prompt": text}
    if cfg.endpoint != "classify":
        body |= {"max_tokens": max_tokens, "temperature": 0.0}
        if cfg.stream:
            body |= {"stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    try:
        async with asyncio.timeout(cfg.timeout_s), client.post(path, json=body) as r:
            if r.status != 200:
                await r.read()
                return _Result(False, str(r.status), time.perf_counter() - start)
            if cfg.endpoint == "classify":
                data = await r.json()
                return _Result(True, "200", time.perf_counter() - start, inputs=len(data["data"]))
            if not cfg.stream:
                tokens = (await r.json())["usage"]["completion_tokens"]
                return _Result(True, "200", time.perf_counter() - start, output_tokens=tokens)
            res = _Result(False, "200", 0.0)
            last = None
            async for raw in r.content:  # one SSE line at a time
                line = raw.decode("utf-8").rstrip("\r\n")
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    return _Result(False, "stream_error", time.perf_counter() - start)
                if chunk.get("usage"):
                    res.output_tokens = chunk["usage"]["completion_tokens"]
                choices = chunk.get("choices") or []
                has_text = any(c.get("text") or (c.get("delta") or {}).get("content") for c in choices)
                if has_text:
                    now = time.perf_counter()
                    if last is None:
                        res.ttft = now - start
                    else:
                        res.itl.append(now - last)
                    last = now
            res.ok, res.latency = True, time.perf_counter() - start
            return res
    except TimeoutError:
        return _Result(False, "timeout", time.perf_counter() - start)
    except Exception as e:  # connection refused or reset: the server is down or overloaded
        return _Result(False, f"connection:{type(e).__name__}", time.perf_counter() - start)


async def _drive(cfg: BenchConfig) -> tuple[list[_Result], float, list[_Result]]:
    import aiohttp

    results: list[_Result] = []
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(base_url=cfg.url, connector=connector, timeout=timeout) as client:
        # warm-up: one at a time, the last requests of the cycle (the timed run starts at request 0)
        warm = [await _one(client, cfg, cfg.num_requests + j) for j in range(cfg.warmup)]
        start = time.perf_counter()
        deadline = start + cfg.duration_s
        if cfg.rate is not None:
            rng = random.Random(cfg.seed)
            tasks, at = [], start
            for i in range(cfg.num_requests):
                at += rng.expovariate(cfg.rate)
                if at > deadline:
                    break
                await asyncio.sleep(max(0.0, at - time.perf_counter()))
                tasks.append(asyncio.ensure_future(_one(client, cfg, i)))
            results = list(await asyncio.gather(*tasks))
        else:
            counter = iter(range(cfg.num_requests))

            async def worker() -> None:
                for i in counter:
                    if time.perf_counter() > deadline:
                        return
                    results.append(await _one(client, cfg, i))

            await asyncio.gather(*(worker() for _ in range(cfg.concurrency)))
        return results, time.perf_counter() - start, warm


def wait_until_healthy(url: str, proc, timeout_s: float) -> str | None:
    """Poll ``GET url/health`` of a server started as ``proc`` (a ``subprocess.Popen``) until it answers
    200. Returns None once healthy, else why not: the process exited, or no 200 within ``timeout_s``."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            return f"exited with {proc.returncode}"
        try:
            if httpx.get(url + "/health", timeout=1.0).status_code == 200:
                return None
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            return f"not healthy after {timeout_s:g} s"
        time.sleep(0.2)


def run_bench(cfg: BenchConfig) -> dict:
    """Run the load and report (see the module docstring); the report is a plain dict (JSON)."""
    cfg.validate()
    results, wall, warm = asyncio.run(_drive(cfg))
    ok = [r for r in results if r.ok]
    failed: dict[str, list[float]] = {}
    for r in results:
        if not r.ok:
            failed.setdefault(r.status, []).append(r.latency)
    report = {
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("inputs", "requests")},
        "mode": f"poisson {cfg.rate}/s" if cfg.rate is not None else f"concurrency {cfg.concurrency}",
        "warmup": {"requests": len(warm), "completed": sum(r.ok for r in warm), "excluded_from_statistics": True},
        "requests": len(results),
        "completed": len(ok),
        "errors_by_status": dict(Counter(r.status for r in results if not r.ok)),
        "error_latency_s": {status: summary(lat) for status, lat in failed.items()},
        "duration_s": wall,
        "request_throughput": len(ok) / wall if wall > 0 else None,
        "e2e_latency_s": summary([r.latency for r in ok]),
    }
    if cfg.endpoint == "classify":
        inputs = sum(r.inputs for r in ok)
        report |= {"inputs": inputs, "inputs_per_s": inputs / wall if wall > 0 else None}
        return report
    tokens = sum(r.output_tokens for r in ok)
    tpot = [(r.latency - r.ttft) / (r.output_tokens - 1) for r in ok if r.ttft is not None and r.output_tokens > 1]
    report |= {
        "output_tokens": tokens,
        "output_token_throughput": tokens / wall if wall > 0 else None,
        "ttft_s": summary([r.ttft for r in ok if r.ttft is not None]),
        "tpot_s": summary(tpot),
        "itl_s": summary([x for r in ok for x in r.itl]),
    }
    return report
