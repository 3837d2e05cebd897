"""``scripts/serve_measure.py --quick`` end to end on tiny random models (a tiny LLaMA with SmolLM2's
tokenizer, tiny BERT teacher / N = 2 checkpoints): every phase runs, the JSON has every section with finite
numbers, the tables and the max-wait plot are written, and no server is left running. Slow (several server
starts and client processes): marked ``slow``."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from serve_fixtures import tiny_classifiers, tiny_llama_folder

ROOT = Path(__file__).resolve().parents[1]


def _numbers(x, path="$"):
    if isinstance(x, bool) or x is None or isinstance(x, str):
        return
    if isinstance(x, (int, float)):
        yield path, x
    elif isinstance(x, dict):
        for k, v in x.items():
            yield from _numbers(v, f"{path}.{k}")
    elif isinstance(x, (list, tuple)):
        for i, v in enumerate(x):
            yield from _numbers(v, f"{path}[{i}]")


@pytest.mark.slow
def test_serve_measure_quick_end_to_end(tmp_path, tokenizer):
    ckpts = tiny_classifiers(tmp_path / "ckpt", tokenizer, ns=(2,))
    lm = tiny_llama_folder(tmp_path / "lm")
    out = tmp_path / "measure"
    cmd = [sys.executable, str(ROOT / "scripts" / "serve_measure.py"), "--quick", "--out", str(out)]
    cmd += ["--teacher", str(ckpts["teacher"]), "--mux", str(ckpts["n2"]), "--task", "tweets", "--lm", str(lm)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads((out / "serve_measure.json").read_text())
    assert res["skipped"] == {}
    for section in ("classify", "maxwait", "generate", "overload"):
        assert section in res, section
    nums = list(_numbers(res))
    bad = [(p, v) for p, v in nums if not math.isfinite(v)]
    assert not bad, bad
    c = res["classify"]["summary"]
    assert set(c) == {"teacher", "n2"} and c["n2"]["offline_speedup"] > 0
    for name in c:
        assert len(c[name]["c64_inputs_per_s_rounds"]) == 2 and c[name]["c64_inputs_per_s"] > 0
        assert c[name]["c1_p50_s"] > 0 and c[name]["c64_p95_s"] > 0
    assert c["n2"]["fraction_of_offline_speedup"] > 0
    assert [p["max_wait_ms"] for p in res["maxwait"]["points"]] == [0.0, 20.0]
    g = res["generate"]
    assert g["workload"]["requests"] == 16
    for rnd in g["rounds"]:  # every request of the workload generated its whole output length
        assert rnd["server"]["completed"] == 16 and rnd["server"]["errors"] == {}
        assert rnd["in_process"]["tokens"] == g["workload"]["generated_tokens"]
    assert all(h["completed"] == 16 for h in g["hf_baseline"])
    assert g["summary"]["server_over_in_process"] > 0 and g["summary"]["hf_baseline_tokens_per_s"] > 0
    assert len(g["rates"]["points"]) == 3 and all(p["ttft_s"]["p50"] > 0 for p in g["rates"]["points"])
    assert set(res["overload"]) == {"classify", "completions"}
    for o in res["overload"].values():
        assert o["health_after"] == 200 and o["normal_request_after"]["status"] == 200
        assert o["rss_mib"]["samples"] > 0 and o["rss_mib"]["max_during"] > 0
        assert o["requests"] == o["completed"] + o["rejected_503"] + sum(o["other_errors"].values())
        assert o["offered_rate"] == pytest.approx(4 * o["sustainable_rate"])
    assert (out / "serve_maxwait.png").stat().st_size > 1000
    md = (out / "serve_measure.md").read_text()
    assert "## Classification" in md and "## Overload" in md and "serve bench" in md
    assert any("hf-baseline" in line for line in res["commands"])
