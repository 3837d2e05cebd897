"""RunFolder (lock, JSON, log, checkpoints), atomic saves under crashes, RNG capture/restore."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from depthmux.errors import DepthmuxError
from depthmux.utils.checkpoint import atomic_directory, existing_directory, load_checkpoint, save_checkpoint
from depthmux.utils.run_folder import RunFolder
from depthmux.utils.seed import capture_rng_state, restore_rng_state, seed_everything


def test_second_process_cannot_take_the_lock(tmp_path):
    run = RunFolder(tmp_path / "run")
    with run.lock():
        code = f"from depthmux.utils.run_folder import RunFolder\nwith RunFolder({str(run.root)!r}).lock(): pass"
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert res.returncode != 0
        last = res.stderr.strip().splitlines()[-1]
        assert f"is in use by another run (pid {os.getpid()})" in last
    with run.lock():  # released: free again
        pass


def test_lock_is_exclusive_within_a_process_too(tmp_path):
    run = RunFolder(tmp_path)
    with run.lock(), pytest.raises(DepthmuxError, match="in use by another run"), RunFolder(tmp_path).lock():
        pass


def test_unwritable_folder_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(DepthmuxError, match="cannot write to"):
        RunFolder(tmp_path / "file" / "run").check_writable()


def test_json_roundtrip_and_errors(tmp_path):
    run = RunFolder(tmp_path)
    run.write_json("config", {"lr": 0.001, "betas": (0.9, 0.95), "train": {"epochs": 3}})
    assert run.has_json("config") and not run.has_json("other")
    assert run.read_json("config")["betas"] == [0.9, 0.95]
    with pytest.raises(DepthmuxError, match=r"other\.json is missing"):
        run.read_json("other")
    (tmp_path / "cut.json").write_text('{"lr": 0.0')
    with pytest.raises(DepthmuxError, match=r"cut\.json is not valid JSON"):
        run.read_json("cut")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(DepthmuxError, match="not hold a JSON object"):
        run.read_json("list")


def test_check_matches_names_the_difference(tmp_path):
    run = RunFolder(tmp_path)
    run.write_json("config", {"lr": 0.001, "betas": [0.9, 0.95], "train": {"epochs": 3}, "task": "sst2"})
    run.check_matches("config", {"lr": 0.001, "betas": (0.9, 0.95)})
    run.check_matches("config", {"lr": 0.5, "train": {"epochs": 3}}, keys=["train.epochs"])
    with pytest.raises(DepthmuxError) as e:
        run.check_matches("config", {"lr": 0.002, "task": "sst2"})
    assert str(e.value) == (
        f"--resume: {tmp_path} was started with a different lr (stored 0.001, given 0.002); "
        "resume with the stored settings or use a new --out"
    )
    with pytest.raises(DepthmuxError, match=r"different epochs \(stored 3, given 4\), n \(stored \(none\)"):
        run.check_matches("config", {"train": {"epochs": 4}, "n": 2}, keys=["train.epochs", "n"])


def test_torn_last_log_line_is_ignored_and_truncate_repairs(tmp_path):
    run = RunFolder(tmp_path)
    assert run.read_log() == []
    for step in (1, 2, 3):
        run.append_log({"step": step, "loss": 1.0 / step})
    with open(run.log_path, "a") as f:
        f.write('{"step": 4, "lo')  # a kill in the middle of a write
    assert [r["step"] for r in run.read_log()] == [1, 2, 3]
    run.truncate_log(lambda r: r["step"] <= 2)
    assert run.log_path.read_text().count("\n") == 2
    run.append_log({"step": 3})
    assert [r["step"] for r in run.read_log()] == [1, 2, 3]
    run.log_path.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(DepthmuxError, match="line 2 is not a JSON record"):
        run.read_log()


def _write(step):
    def write(d):
        save_checkpoint(d / "trainer", {"w": {"x": torch.full((2,), float(step))}}, {"step": step})

    return write


def _load(d):
    return load_checkpoint(d / "trainer")[1]["step"]


def test_checkpoints_keep_newest_and_skip_a_corrupt_one(tmp_path, capsys):
    run = RunFolder(tmp_path)
    assert run.latest_checkpoint(_load) is None
    for step in (5, 10, 15):
        run.save_checkpoint(step, _write(step), keep=2)
    assert [s for s, _ in run.checkpoints()] == [10, 15]
    step, path, loaded = run.latest_checkpoint(_load)
    assert (step, path.name, loaded) == (15, "step-000015", 15)
    (path / "trainer" / "state.json").write_text('{"step": 1')  # truncated newest
    step, path, loaded = run.latest_checkpoint(_load)
    assert (step, loaded) == (10, 10)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: skipping corrupt checkpoint") and "step-000015" in err[0]


def test_stale_temp_folders_are_cleaned(tmp_path):
    run = RunFolder(tmp_path)
    run.save_checkpoint(1, _write(1))
    stale = [tmp_path / "checkpoints" / ".step-000002.abc.tmp", tmp_path / ".model.xyz.tmp"]
    for d in stale:
        d.mkdir(parents=True)
        (d / "junk").write_text("x")
    (tmp_path / ".log.jsonl.q1.tmp").write_text("partial")
    removed = run.clean_stale_tmp()
    assert set(removed) == set(stale) | {tmp_path / ".log.jsonl.q1.tmp"}
    assert not any(p.exists() for p in removed)
    assert [s for s, _ in run.checkpoints()] == [1]


# Crash points of atomic_directory replacing an existing folder: the process dies (os._exit, no
# cleanup) at the k-th filesystem call among: rename old aside, rename new into place, delete old.
CRASH_SCRIPT = textwrap.dedent("""
    import os, shutil, sys
    import torch
    from depthmux.utils.checkpoint import save_checkpoint
    crash_at, calls = int(sys.argv[2]), [0]
    def dying(real):
        def f(*a, **k):
            calls[0] += 1
            if calls[0] == crash_at:
                os._exit(9)
            return real(*a, **k)
        return f
    os.replace, shutil.rmtree = dying(os.replace), dying(shutil.rmtree)
    save_checkpoint(sys.argv[1], {"w": {"x": torch.full((2,), 2.0)}}, {"version": 2})
""")


@pytest.mark.parametrize("crash_at", [1, 2, 3, 99])
def test_atomic_replace_survives_a_crash_at_every_point(tmp_path, crash_at):
    target = tmp_path / "best"
    save_checkpoint(target, {"w": {"x": torch.full((2,), 1.0)}}, {"version": 1})
    res = subprocess.run([sys.executable, "-c", CRASH_SCRIPT, str(target), str(crash_at)], capture_output=True)
    assert res.returncode == (9 if crash_at < 99 else 0), res.stderr
    _, state = load_checkpoint(target)  # readable at every point, old or new
    assert state["version"] == (1 if crash_at <= 2 else 2)
    if crash_at == 2:  # between the renames: only the parked-aside old version exists
        assert not target.exists() and existing_directory(target).name == ".best.old"
    cleaned = RunFolder(tmp_path).clean_stale_tmp()
    assert target.is_dir() and sorted(p.name for p in tmp_path.iterdir()) == ["best"]
    assert load_checkpoint(target)[1]["version"] == (1 if crash_at <= 2 else 2)
    assert all(not p.exists() for p in cleaned)
    # the next save after a crash works and replaces whatever survived
    save_checkpoint(target, {"w": {"x": torch.zeros(2)}}, {"version": 3})
    assert load_checkpoint(target)[1]["version"] == 3


def test_failed_write_keeps_the_old_folder(tmp_path):
    target = tmp_path / "model"
    save_checkpoint(target, {}, {"version": 1})
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        (tmp / "half").write_text("x")
        raise RuntimeError("disk full")
    assert load_checkpoint(target)[1]["version"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_rng_state_roundtrip():
    seed_everything(3)
    tensors, meta = capture_rng_state()
    json.dumps(meta)
    first = (random.random(), float(np.random.rand()), torch.rand(3))
    seed_everything(99)
    restore_rng_state(tensors, meta)
    again = (random.random(), float(np.random.rand()), torch.rand(3))
    assert first[:2] == again[:2] and torch.equal(first[2], again[2])
