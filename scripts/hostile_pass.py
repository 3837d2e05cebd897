"""A hostile user's pass over every ``depthmux`` command and the Python API (issues 20 and 21).

Each case (``scripts/hostile_cases.py``) is one invocation with a declared expectation:

* ``error``: exit status 2 and exactly one line on stderr starting ``error: ``, no traceback;
* ``ok``: exit status 0, and its check (did it do the right thing?) passes;
* ``either``: a clear refusal or a correct run are both right (the issue allows both),

plus paths that must be byte-identical afterwards (a user's folder given as ``--out``, the shared
fixtures a case reads). Outcome classes: ``clear-error``, ``correct``, ``lost`` (a protected path
changed), ``silent`` (an error was expected and it exited 0, or it exited 0 and its check failed),
``traceback`` (a traceback, an uncaught exception, or an exit status other than 0/2/130), ``hang``
(its timeout passed), ``unclear`` (exit 2 but not one ``error:`` line) and ``refused`` (a valid
invocation refused with a clear error).

Most cases run in-process in ``--jobs`` long-lived worker processes (each imports depthmux once and
calls ``depthmux.cli.main(argv)`` per case with stdout/stderr captured at the file-descriptor level);
a worker that passes a case's timeout is killed (the case is a hang) and replaced. Kill -9 / resume,
Ctrl-C and the real console entry point run as subprocesses. The PYTHONPATH decides which depthmux
is tested::

    PYTHONPATH=/work/main/src OMP_NUM_THREADS=1 python scripts/hostile_pass.py --json report.json
    python scripts/hostile_pass.py --only 'lm-generate-*' --list

Prints one line per case that is not ``clear-error``/``correct``, the totals per class, the runtime;
exit status 1 when any case is not ``clear-error`` or ``correct``.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import contextlib

import hostile_cases as hc

CLASSES = ["clear-error", "correct", "lost", "silent", "traceback", "hang", "unclear", "refused"]
GOOD = {"clear-error", "correct"}
RESTART_EVERY = 80  # cases per worker before a fresh one (memory, leaked state)


# ---------------------------------------------------------------------------------------------
# snapshots of protected paths
# ---------------------------------------------------------------------------------------------


def snapshot(path: Path) -> dict[str, str]:
    """Relative path -> sha256 (files), 'dir' (folders), 'link:target' (symlinks) of everything under
    ``path``; {} when it does not exist."""
    out: dict[str, str] = {}
    if path.is_symlink():
        return {".": "link:" + os.readlink(path)}
    if path.is_file():
        return {".": hashlib.sha256(path.read_bytes()).hexdigest()}
    if not path.is_dir():
        return out
    for root, dirs, files in os.walk(path):
        for d in dirs:
            out[os.path.relpath(os.path.join(root, d), path)] = "dir"
        for f in files:
            p = os.path.join(root, f)
            rel = os.path.relpath(p, path)
            try:
                out[rel] = (
                    "link:" + os.readlink(p) if os.path.islink(p) else hashlib.sha256(Path(p).read_bytes()).hexdigest()
                )
            except OSError as e:
                out[rel] = f"unreadable:{e.errno}"
    return out


def diff_snapshots(before: dict[str, str], after: dict[str, str], strict: bool = True) -> str | None:
    if before == after:
        return None
    gone = sorted(set(before) - set(after))
    new = sorted(set(after) - set(before)) if strict else []
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    parts = []
    if not (gone or new or changed):
        return None
    if gone:
        parts.append(f"deleted {gone[:4]}")
    if changed:
        parts.append(f"changed {changed[:4]}")
    if new:
        parts.append(f"added {new[:4]}")
    return "; ".join(parts)


# ---------------------------------------------------------------------------------------------
# classification
# ---------------------------------------------------------------------------------------------


def classify(case: hc.Case, r: dict) -> tuple[str, str]:
    """(class, one-line symptom) of a raw result ``r`` (code, stdout, stderr, exc, lost, check...)."""
    err = r.get("stderr", "")
    lines = [ln for ln in err.splitlines() if ln.strip()]
    first = lines[0][:160] if lines else ""
    if r.get("lost"):
        return "lost", f"protected path changed: {r['lost']}"
    if r.get("hang"):
        return "hang", f"no answer within {case.timeout:.0f} s (killed)"
    if r.get("exc"):
        return "traceback", r["exc"][:200]
    if "Traceback (most recent call last)" in err:
        tail = [ln for ln in lines if ln and not ln.startswith(" ")]
        return "traceback", (tail[-1] if tail else "Traceback")[:200]
    code = r.get("code")
    if code not in (0, 2, 130):
        return "traceback", f"exit status {code}: {first or (err[-160:] if err else 'no stderr')}"
    clear = code == 2 and len(lines) == 1 and lines[0].startswith("error: ")
    if case.expect == "help":
        if code in (0, 2) and "Usage" in r.get("stdout", "") + err:
            return "correct", "usage shown"
        return "unclear", f"exit {code} without a usage text"
    if code == 130 and case.expect == "interrupt":
        if lines and lines[-1].startswith("interrupted"):
            return "correct", first
        return "unclear", f"exit 130 without the 'interrupted' line: {err[-160:]!r}"
    if code == 2 and not clear:
        last = err.replace("\r", "\n").strip().splitlines()[-1:] or [""]
        if last[0].startswith("error: "):
            return (
                "unclear",
                f"late error, after {len(lines) - 1} other stderr lines (work had started): {last[0][:200]}",
            )
        return "unclear", f"exit 2 with {len(lines)} stderr lines: {err[-200:]!r}"
    if code == 130:
        return "traceback", f"exit 130 (interrupted) unexpectedly: {first}"
    if case.expect == "error":
        if code == 2:
            if case.upfront and r.get("stdout", "").strip():
                return "unclear", f"late error, after the work ran (stdout: {r['stdout'].strip()[:60]!r}...): {first}"
            if case.message and not re.search(case.message, first, re.I):
                return "unclear", f"misleading: the message does not match /{case.message}/: {first}"
            return "clear-error", first
        return "silent", "exit 0 (an error was expected)" + (f"; {r['check']}" if r.get("check") else "")
    if case.expect in ("ok", "either", "interrupt"):
        if code == 2:
            if case.expect == "either":
                return "clear-error", first
            return "refused", first
        if r.get("check"):
            return "silent", f"exit 0 but {r['check']}"
        return "correct", (r.get("stdout", "").strip().splitlines() or [""])[-1][:160]
    raise ValueError(case.expect)


# ---------------------------------------------------------------------------------------------
# running one case (in a worker, or in a subprocess from the parent)
# ---------------------------------------------------------------------------------------------


def _read(path: Path) -> str:
    return path.read_bytes().decode("utf-8", "replace") if path.exists() else ""


def run_inprocess(case: hc.Case, work: Path) -> dict:
    """Run ``case`` here (a worker; its folder is prepared by the parent): capture fd 1/2, call main or the
    API function, then its check."""
    ctx = hc.Context(case, work)
    out_f, err_f = ctx.dir / ".stdout", ctx.dir / ".stderr"
    saved = os.dup(1), os.dup(2)
    old_cwd = os.getcwd()
    result: dict = {}
    with open(out_f, "wb") as fo, open(err_f, "wb") as fe:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(fo.fileno(), 1)
        os.dup2(fe.fileno(), 2)
        os.chdir(ctx.dir)
        env_saved = {k: os.environ.get(k) for k in case.env}
        os.environ.update(case.env)
        try:
            if case.api is not None:
                result.update(hc.run_api(case, ctx))
            else:
                from depthmux.cli import main

                try:
                    main(ctx.argv())
                    result["code"] = 0
                except SystemExit as e:
                    c = e.code
                    result["code"] = 0 if c is None else c if isinstance(c, int) else 1
                    if not isinstance(c, int | None):
                        print(c, file=sys.stderr)
                except BaseException as e:
                    result["exc"] = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
                    result["code"] = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            os.chdir(old_cwd)
            for k, v in env_saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            hc.reset_process_state()
    result["stdout"], result["stderr"] = _read(out_f), _read(err_f)
    if case.api is not None:  # the API's answer is its exception: judge the message, not library warnings
        result["stderr_real"] = result["stderr"]
        result["stderr"] = "error: " + result["api_error"] if "api_error" in result else ""
    ctx.stdout, ctx.stderr = result["stdout"], result["stderr"]
    if result.get("code") == 0 and case.check is not None and not result.get("exc"):
        try:
            result["check"] = case.check(ctx)
        except Exception as e:
            result["check"] = f"check crashed: {type(e).__name__}: {e}"
        hc.reset_process_state()
    return result


def run_subprocess(case: hc.Case, work: Path) -> dict:
    """Run ``case`` through its own processes (kill -9 / resume, Ctrl-C, the console entry point)."""
    ctx = hc.Context(case, work)
    result = hc.run_process_case(case, ctx)
    ctx.stdout, ctx.stderr = result.get("stdout", ""), result.get("stderr", "")
    if result.get("code") == 0 and case.check is not None and not result.get("hang"):
        try:
            result["check"] = case.check(ctx)
        except Exception as e:
            result["check"] = f"check crashed: {type(e).__name__}: {e}"
    return result


def worker_main(work: Path) -> None:
    """Read case names on stdin, answer one JSON line per case on the original stdout."""
    answer = os.fdopen(os.dup(1), "w")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    hc.limit_memory(hc.MEMORY_LIMIT)
    hc.reset_process_state()
    import depthmux.cli  # noqa: F401  (import once, before the first case is timed)

    cases = {c.name: c for c in hc.all_cases()}
    answer.write(json.dumps({"ready": True}) + "\n")
    answer.flush()
    for line in sys.stdin:
        name = line.strip()
        if not name:
            continue
        t0 = time.time()
        result = run_inprocess(cases[name], work)
        result["seconds"] = round(time.time() - t0, 2)
        answer.write(json.dumps({"name": name, **result}) + "\n")
        answer.flush()


class Worker:
    def __init__(self, work: Path, script: Path):
        self.work, self.script = work, script
        self.proc: subprocess.Popen | None = None
        self.done = 0

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(self.script), "--worker", "--work", str(self.work)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        self.done = 0
        self._answers: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, args=(self.proc, self._answers), daemon=True).start()
        ready = self._answers.get(timeout=300)
        if not ready or not ready.get("ready"):
            raise RuntimeError("worker failed to start")

    @staticmethod
    def _pump(proc: subprocess.Popen, answers: queue.Queue) -> None:
        for line in proc.stdout:
            try:
                answers.put(json.loads(line))
            except json.JSONDecodeError:
                continue
        answers.put(None)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def run(self, case: hc.Case) -> dict:
        if self.proc is None or self.proc.poll() is not None or self.done >= RESTART_EVERY:
            self.kill()
            self.start()
        t0 = time.time()
        self.proc.stdin.write(case.name + "\n")
        self.proc.stdin.flush()
        try:
            answer = self._answers.get(timeout=case.timeout)
        except queue.Empty:
            self.kill()
            return {"hang": True, "seconds": round(time.time() - t0, 2)}
        if answer is None:  # the worker died (a crash in C, os._exit, a signal)
            code = self.proc.wait()
            self.proc = None
            return {
                "code": code,
                "exc": f"the process died (exit status {code})",
                "seconds": round(time.time() - t0, 2),
            }
        self.done += 1
        return answer


# ---------------------------------------------------------------------------------------------
# the pass
# ---------------------------------------------------------------------------------------------


def cli_commands() -> list[str]:
    """Every command and group of the depthmux under test (its Typer tree), e.g. 'mux', 'mux train'."""
    import typer

    from depthmux.cli import app

    def walk(cmd, prefix):
        if prefix:
            yield " ".join(prefix)
        for name, sub in getattr(cmd, "commands", {}).items():  # a group (Typer's own copy of click's Group)
            yield from walk(sub, [*prefix, name])

    return list(walk(typer.main.get_command(app), []))


def uncovered_commands(cases: list[hc.Case]) -> list[str]:
    """Commands of the depthmux under test that no case invokes."""
    used = {" ".join(c.argv[:k]) for c in cases if c.argv for k in (1, 2, 3)}
    return [c for c in cli_commands() if c not in used]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, help="work folder (fixtures and per-case folders); default: a new temp folder")
    ap.add_argument("--only", action="append", help="run only cases whose name matches this glob (repeatable)")
    ap.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    ap.add_argument("--json", type=Path, help="write the full report here")
    ap.add_argument("--list", action="store_true", help="list the selected cases and exit")
    ap.add_argument("--verbose", action="store_true", help="print every case, not only the failing ones")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker_main(args.work)
        return 0

    cases = hc.all_cases()
    names = [c.name for c in cases]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise SystemExit(f"duplicate case names: {sorted(dupes)}")
    available = set(cli_commands())
    skipped = [c.name for c in cases if c.requires and c.requires not in available]
    cases = [c for c in cases if c.name not in skipped]
    if skipped:
        print(
            f"skipped {len(skipped)} cases of commands this depthmux lacks: "
            + ", ".join(sorted({c.requires for c in hc.all_cases() if c.name in skipped}))
        )
    if args.only:
        cases = [c for c in cases if any(fnmatch.fnmatch(c.name, pat) for pat in args.only)]
    if args.list:
        for c in cases:
            print(f"{c.name:50s} {c.expect:9s} {c.mode:10s} {c.describe()}")
        print(f"{len(cases)} cases")
        return 0
    if not cases:
        raise SystemExit("no case matches --only")
    work = args.work or Path(tempfile.mkdtemp(prefix="hostile-"))
    work = work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("DEPTHMUX_CACHE", str(work / "cache"))
    hc.build_fixtures(cases, work, log=lambda m: print(m, flush=True))
    t_fix = time.time() - t0
    print(f"fixtures ready in {t_fix:.0f} s; {len(cases)} cases, {args.jobs} workers, work folder {work}", flush=True)

    todo: queue.Queue = queue.Queue()
    # the slowest first, so that the workers end together
    for c in sorted(cases, key=lambda c: -c.cost):
        todo.put(c)
    results: dict[str, dict] = {}
    lock = threading.Lock()
    script = Path(__file__).resolve()

    def slot() -> None:
        worker = Worker(work, script)
        try:
            while True:
                try:
                    case = todo.get_nowait()
                except queue.Empty:
                    return
                ctx = hc.Context(case, work)
                ctx.prepare()
                strict = ctx.protected_paths()
                protected = {p: snapshot(Path(p)) for p in strict}
                if case.mode == "inproc":
                    r = worker.run(case)
                else:
                    t1 = time.time()
                    r = run_subprocess(case, work)
                    r["seconds"] = round(time.time() - t1, 2)
                if r.get("code") == 0 and case.expect != "error":  # a run it accepted may continue in its copy
                    protected = {p: b for p, b in protected.items() if not ctx.is_copy(p)}
                lost = [
                    f"{p}: {d}" for p, b in protected.items() if (d := diff_snapshots(b, snapshot(Path(p)), strict[p]))
                ]
                if lost:
                    r["lost"] = " | ".join(lost)[:400]
                cls, symptom = classify(case, r)
                r.update(cls=cls, symptom=symptom)
                with lock:
                    results[case.name] = r
                    if cls not in GOOD or args.verbose:
                        print(f"{cls:12s} {case.name}: {symptom}  [{r.get('seconds', 0):.1f} s]", flush=True)
        finally:
            worker.kill()

    threads = [threading.Thread(target=slot) for _ in range(max(1, args.jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    totals = dict.fromkeys(CLASSES, 0)
    for r in results.values():
        totals[r["cls"]] += 1
    wall = time.time() - t0
    print(f"\n{len(results)} invocations in {wall / 60:.1f} min (fixtures {t_fix:.0f} s):")
    print("  " + ", ".join(f"{k} {v}" for k, v in totals.items()))
    bad = [n for n, r in results.items() if r["cls"] not in GOOD]
    uncovered = uncovered_commands(hc.all_cases())
    if uncovered:
        print("  commands of this depthmux with no case in the table: " + ", ".join(uncovered))
    if args.json:
        import depthmux

        report = {
            "depthmux_file": depthmux.__file__,
            "invocations": len(results),
            "seconds": round(wall, 1),
            "fixture_seconds": round(t_fix, 1),
            "totals": totals,
            "failing": sorted(bad),
            "uncovered_commands": uncovered,
            "skipped_cases": skipped,
            "cases": {
                c.name: {
                    "expect": c.expect,
                    "mode": c.mode,
                    "invocation": c.describe(),
                    **{
                        k: v
                        for k, v in results[c.name].items()
                        if k in ("cls", "symptom", "code", "seconds", "check", "lost", "exc")
                    },
                    "stderr_tail": results[c.name].get("stderr", "")[-600:],
                }
                for c in cases
                if c.name in results
            },
        }
        args.json.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
