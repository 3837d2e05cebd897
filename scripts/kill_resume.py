"""kill -9 at random moments during `depthmux mux train` and `depthmux lm train`, resume, compare.

For each command: one uninterrupted reference run, then runs killed with SIGKILL at random moments
(``--times`` kills in all) and resumed with ``--resume`` until they finish; every finished run must
equal the reference: the same final weights (every ``*.safetensors`` outside ``checkpoints/``,
bit for bit) and the same logged history (every ``log.jsonl``, wall-clock ``time`` left out).
One line per kill, a PASS/FAIL summary; exit status 1 on FAIL. Tiny settings: a few minutes.

    OMP_NUM_THREADS=1 python scripts/kill_resume.py --times 10 [--only lm|mux] [--work /tmp/kill_resume]

`mux train` runs on the first 400 training and 64 dev rows of SST-2 (``--glue``), `lm train` on a
generated corpus with a 300-token BPE.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]


def lm_command(out: Path, corpus: Path) -> list[str]:
    return [
        "lm",
        "train",
        "--out",
        str(out),
        "--corpus",
        str(corpus),
        "--tokenizer",
        "bpe:300",
        "--hidden",
        "32",
        "--layers",
        "2",
        "--heads",
        "4",
        "--steps",
        "40",
        "--batch-size",
        "4",
        "--block-size",
        "32",
        "--warmup",
        "4",
        "--checkpoint-every",
        "5",
        "--eval-every",
        "10",
        "--max-eval-blocks",
        "8",
        "--no-progress",
    ]


def mux_command(out: Path, glue: Path) -> list[str]:
    return [
        "mux",
        "train",
        "--task",
        "sst2",
        "--data-dir",
        str(glue),
        "--n",
        "2",
        "--prefill-layers",
        "0",
        "--mixer",
        "reversible",
        "--max-train",
        "300",
        "--epochs",
        "2",
        "--batch-size",
        "32",
        "--shuffles",
        "1",
        "--no-bench",
        "--out",
        str(out),
    ]


def tiny_glue(source: Path, target: Path, train_rows: int = 400, dev_rows: int = 64) -> Path:
    """``target/SST-2/{train,dev}.tsv``: the first rows of the real SST-2 (a fast, real-data run)."""
    (target / "SST-2").mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", train_rows), ("dev", dev_rows)):
        lines = (source / "SST-2" / f"{split}.tsv").read_text(encoding="utf-8").splitlines()
        (target / "SST-2" / f"{split}.tsv").write_text("\n".join(lines[: rows + 1]) + "\n", encoding="utf-8")
    return target


def started(kind: str, out: Path) -> bool:
    """Whether a killed run left anything to resume (else the plain command starts it again)."""
    return (out / "train_config.json").is_file() if kind == "lm" else out.is_dir() and any(out.iterdir())


def snapshot(out: Path) -> dict[str, object]:
    """Final weights and logged histories of a finished run, keyed by path inside ``out``."""
    found: dict[str, object] = {}
    for f in sorted(out.rglob("*.safetensors")):
        rel = f.relative_to(out)
        if "checkpoints" not in rel.parts and not any(p.startswith(".") for p in rel.parts):
            found[str(rel)] = load_file(str(f))
    for f in sorted(out.rglob("log.jsonl")):
        rel = f.relative_to(out)
        if "checkpoints" not in rel.parts:
            records = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
            found[str(rel)] = [{k: v for k, v in r.items() if k != "time"} for r in records]
    return found


def differences(ref: dict, got: dict) -> list[str]:
    out = [f"missing {k}" for k in ref if k not in got] + [f"extra {k}" for k in got if k not in ref]
    for k in ref.keys() & got.keys():
        a, b = ref[k], got[k]
        if isinstance(a, dict):
            same = a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
        else:
            same = a == b
        if not same:
            out.append(f"{k} differs")
    return out


def launch(args: list[str], log) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "depthmux", *args], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO
    )


def check(kind: str, times: int, work: Path, data: Path, rng: random.Random) -> bool:
    make = lm_command if kind == "lm" else mux_command
    ref_out = work / f"{kind}-reference"
    t0 = time.time()
    with open(work / f"{kind}-reference.log", "w") as log:
        rc = launch(make(ref_out, data), log).wait()
    duration = time.time() - t0
    if rc != 0:
        print(f"{kind}: FAIL, the uninterrupted run exited {rc} (see {work / f'{kind}-reference.log'})")
        return False
    reference = snapshot(ref_out)
    print(f"{kind}: reference run {duration:.1f} s, {len(reference)} files compared", flush=True)

    ok, kills, cycle = True, 0, 0
    while True:
        cycle += 1
        out = work / f"{kind}-run{cycle}"
        launches = 0
        with open(work / f"{kind}-run{cycle}.log", "w") as log:
            while True:
                args = make(out, data) + (["--resume"] if started(kind, out) else [])
                proc = launch(args, log)
                launches += 1
                if kills < times:
                    delay = rng.uniform(0.2 * duration, 1.05 * duration)
                    try:
                        rc = proc.wait(timeout=delay)
                    except subprocess.TimeoutExpired:
                        proc.send_signal(signal.SIGKILL)
                        proc.wait()
                        kills += 1
                        print(
                            f"{kind}: kill {kills}/{times} at {delay:.1f} s (run {cycle}, launch {launches})",
                            flush=True,
                        )
                        continue
                else:
                    rc = proc.wait()
                break
        if rc != 0:
            print(f"{kind}: FAIL, run {cycle} exited {rc} after {launches} launches (see {log.name})")
            return False
        diff = differences(reference, snapshot(out))
        print(
            f"{kind}: run {cycle} finished after {launches} launches: "
            + ("identical to the reference" if not diff else "DIFFERS: " + "; ".join(diff[:5])),
            flush=True,
        )
        ok = ok and not diff
        if kills >= times:
            return ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--times", type=int, default=10, help="kills per command")
    ap.add_argument("--only", choices=["lm", "mux"], help="check one command only")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    ap.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one, removed)")
    ap.add_argument(
        "--glue",
        type=Path,
        default=REPO.parent / "shared" / "data" / "glue",
        help="GLUE folder holding SST-2/ (its first 400 train and 64 dev rows are used)",
    )
    args = ap.parse_args()
    if args.times < 1:
        ap.error("--times must be >= 1")
    work = args.work or Path(tempfile.mkdtemp(prefix="kill_resume."))
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / "corpus.txt"
    corpus.write_text(
        "\n\n".join(f"paragraph {i}: " + " ".join(f"word{(i * 5 + j) % 17}" for j in range(40)) for i in range(60))
    )
    glue = tiny_glue(args.glue, work / "glue") if args.only != "lm" else work
    rng = random.Random(args.seed)
    results = {
        kind: check(kind, args.times, work, corpus if kind == "lm" else glue, rng)
        for kind in ("mux", "lm")
        if args.only in (None, kind)
    }
    passed = all(results.values())
    print(
        ("PASS" if passed else "FAIL") + ": " + ", ".join(f"{k} {'ok' if v else 'FAILED'}" for k, v in results.items())
    )
    if args.work is None and passed:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
