"""Issue 19's quality/speed table and plot, read from measured result files (nothing typed in by hand).

    rm -f docs/results/depth/tradeoff.md docs/results/depth/tradeoff.png   # outputs must be new files
    python scripts/depth_tradeoff.py docs/results/depth/tradeoff.json \
        --markdown docs/results/depth/tradeoff.md --plot docs/results/depth/tradeoff.png

The manifest names, for each row, the files its numbers come from (paths relative to the manifest):

* ``nll``: ``{"file": F}`` (``depthmux lm eval --json``: key ``nll``) or ``{"train_log": F, "step": S}``
  (the ``{"step": S, "eval": {"nll": ...}}`` line of a run's ``log.jsonl``, or of an extract of it);
* ``fewshot``: F (``depthmux lm eval --tasks all --json``);
* ``speed``: ``{"file": F, "num": "mor/engine_lockstep", "den": "vanilla/engine_lockstep"}`` (an
  ``lm bench-decode --json`` result: the ratio of the median tokens/s of two configs timed in the same
  process, with the lowest and highest per-repeat ratio) or ``{"file": F, "config": "exit@0.9",
  "batch_size": 1}`` (an ``ee bench --json`` result: ``speedup_vs_deep``, ``token_agreement``,
  ``exit_rate`` / ``acceptance_rate``);
* ``flops``: ``{"file": F, "side": "mor" | "vanilla"}`` (bench-decode's FLOPs per generated token and
  the decode-only average depth where the file has it).

Every speed is a ratio against SmolLM2 (or the early-exit model's own deep path, the same 30 layers)
measured in one process: absolute tokens/s of different processes are not comparable on this machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from depthmux.errors import DepthmuxError
from depthmux.utils.checks import check_output_file

TASKS = (
    ("depthmux_sst2", "SST-2 4-shot"),
    ("depthmux_cloze_shakespeare", "cloze Shak."),
    ("depthmux_cloze_kjv", "cloze KJV"),
)


def _fail(message: str) -> None:
    """One line on stderr, exit status 2 (a bad manifest or a missing / malformed result file)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _load(base: Path, name: str):
    path = base / name
    if not path.is_file():
        _fail(f"{path} (named in the manifest) does not exist")
    try:
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        _fail(f"{path} is not valid JSON: {e}")


def read_nll(base: Path, spec: dict) -> float:
    if "file" in spec:
        return float(_load(base, spec["file"])["nll"])
    for line in _load(base, spec["train_log"]):
        if line.get("step") == spec["step"] and "eval" in line:
            return float(line["eval"]["nll"])
    _fail(f"{spec['train_log']} has no evaluation at step {spec['step']}")


def read_speed(base: Path, spec: dict) -> dict:
    data = _load(base, spec["file"])
    if "configs" in data:  # lm bench-decode
        num, den = data["configs"][spec["num"]], data["configs"][spec["den"]]
        pairs = [a / b for a, b in zip(num["tokens_per_s_runs"], den["tokens_per_s_runs"], strict=True)]
        ratio = statistics.median(num["tokens_per_s_runs"]) / statistics.median(den["tokens_per_s_runs"])
        return {
            "ratio": ratio,
            "low": min(pairs),
            "high": max(pairs),
            "tokens_per_s": statistics.median(num["tokens_per_s_runs"]),
        }
    for row in data["results"]:  # ee bench
        if row["config"] == spec["config"] and row["batch_size"] == spec.get("batch_size", 1):
            return {
                "ratio": row["speedup_vs_deep"],
                "tokens_per_s": row["tokens_per_s"],
                "agreement": row.get("token_agreement"),
                "exit_rate": row.get("exit_rate"),
                "acceptance_rate": row.get("acceptance_rate"),
            }
    _fail(f"{spec['file']} has no config {spec['config']!r} at batch size {spec.get('batch_size', 1)}")


def read_flops(base: Path, spec: dict) -> dict:
    counts = _load(base, spec["file"])["counts"][spec["side"]]
    return {"gflops": counts["flops_per_generated_token"] / 1e9, "decode_depth": counts.get("decode_average_depth")}


def collect(manifest: Path) -> list[dict]:
    base = manifest.parent
    rows = []
    specs = _load(base, manifest.name)
    if not isinstance(specs, dict) or not isinstance(specs.get("rows"), list):
        _fail(f'{manifest} has no list of "rows"')
    for spec in specs["rows"]:
        row = {"name": spec["name"], "group": spec.get("group", ""), "budget": spec.get("budget", "")}
        if "nll" in spec:
            row["nll"] = read_nll(base, spec["nll"])
        if "fewshot" in spec:
            row["fewshot"] = _load(base, spec["fewshot"])["tasks"]
        if "speed" in spec:
            row["speed"] = read_speed(base, spec["speed"])
            row["speed_workload"] = spec["speed"].get("workload", "")
        if "flops" in spec:
            row["flops"] = read_flops(base, spec["flops"])
        rows.append(row)
    return rows


def _fmt(x, digits=3):
    return "" if x is None else f"{x:.{digits}f}"


def markdown(rows: list[dict]) -> str:
    head = (
        ["model", "uptraining", "held-out NLL"]
        + [t for _, t in TASKS]
        + ["speed vs SmolLM2 (range)", "workload", "agreement / exit or acceptance", "GFLOPs/token"]
    )
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        shots = []
        for key, _ in TASKS:
            t = r.get("fewshot", {}).get(key)
            shots.append(f"{t['acc']:.3f} ± {t['acc_stderr']:.3f}" if t else "")
        s = r.get("speed")
        speed = (
            "" if s is None else f"**{s['ratio']:.2f}**" + (f" ({s['low']:.2f}-{s['high']:.2f})" if "low" in s else "")
        )
        agree = ""
        if s and s.get("agreement") is not None:
            rate = s.get("acceptance_rate") if s.get("acceptance_rate") else s.get("exit_rate")
            agree = f"{s['agreement']:.3f} / {_fmt(rate, 2)}"
        f = r.get("flops")
        flops = (
            ""
            if f is None
            else f"{f['gflops']:.3f}" + (f" (depth {f['decode_depth']:.2f})" if f.get("decode_depth") else "")
        )
        out.append(
            "| "
            + " | ".join(
                [r["name"], r["budget"], _fmt(r.get("nll"))]
                + shots
                + [speed, r.get("speed_workload", ""), agree, flops]
            )
            + " |"
        )
    return "\n".join(out) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    markers = {"baseline": "*", "mor": "o", "trunc": "s", "ee": "^", "spec": "D"}
    for r in rows:
        s = r.get("speed")
        if s is None:
            continue
        m = markers.get(r["group"], "x")
        xerr = [[s["ratio"] - s["low"]], [s["high"] - s["ratio"]]] if "low" in s else None
        if "nll" in r:
            axes[0].errorbar(s["ratio"], r["nll"], xerr=xerr, marker=m, ms=9, capsize=3, label=r["name"])
        sst = r.get("fewshot", {}).get("depthmux_sst2")
        if sst:
            axes[1].errorbar(
                s["ratio"], sst["acc"], xerr=xerr, yerr=sst["acc_stderr"], marker=m, ms=9, capsize=3, label=r["name"]
            )
        if s.get("agreement") is not None:
            axes[2].plot(s["ratio"], s["agreement"], marker=m, ms=9, ls="", label=r["name"])
    axes[0].set(
        xlabel="decode speed vs SmolLM2 (same process)",
        ylabel="held-out NLL (nats, lower is better)",
        title="quality vs speed",
    )
    axes[1].set(
        xlabel="decode speed vs SmolLM2 (same process)", ylabel="SST-2 4-shot accuracy", title="few-shot vs speed"
    )
    axes[2].set(
        xlabel="speed vs the deep model (batch as labelled)",
        ylabel="agreement with deep greedy output",
        title="early exit / self-speculation",
    )
    for ax in axes:
        ax.axvline(1.0, color="grey", lw=0.8, ls=":")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("manifest", type=Path)
    p.add_argument("--markdown", type=Path, help="Write the table here (else stdout).")
    p.add_argument("--plot", type=Path, help="Write the plot (PNG) here.")
    a = p.parse_args(argv)
    if not a.manifest.is_file():
        p.error(f"manifest {a.manifest} does not exist")
    for option, path in (("--markdown", a.markdown), ("--plot", a.plot)):
        if path is not None:  # a new file only: a user's file is never replaced
            try:
                check_output_file(option, path, {"md"} if option == "--markdown" else {"png", "pdf", "svg"})
            except DepthmuxError as e:
                _fail(str(e))
    rows = collect(a.manifest)
    table = markdown(rows)
    if a.markdown:
        a.markdown.write_text(table)
    else:
        print(table)
    if a.plot:
        plot(rows, a.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
