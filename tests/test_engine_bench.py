"""``depthmux lm bench-decode`` and ``lm generate`` on tiny saved models: the JSON's structure, streaming,
one-line errors (no speed is asserted: timings only have to be positive numbers)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from depthmux.cli import main
from depthmux.cli.lm import app
from depthmux.data.text import load_tokenizer
from depthmux.engine import LLM, SamplingParams

runner = CliRunner()


@pytest.fixture
def folders(tmp_path, tiny_llama_factory, tiny_recursive_factory):
    vanilla = tiny_llama_factory(vocab_size=64, num_hidden_layers=4, max_position_embeddings=64).eval()
    vanilla.save_pretrained(tmp_path / "vanilla")
    mor = tiny_recursive_factory(
        vocab_size=64, num_hidden_layers=4, num_recursions=2, mor_router="expert", max_position_embeddings=64
    ).eval()
    mor.save_pretrained(tmp_path / "mor")
    return tmp_path / "vanilla", tmp_path / "mor"


def test_bench_decode_json_structure(folders, tmp_path):
    vanilla, mor = folders
    res = runner.invoke(
        app,
        [
            "bench-decode",
            "--model",
            str(vanilla),
            "--mor-model",
            str(mor),
            "--num-requests",
            "6",
            "--prompt-len",
            "3-10",
            "--output-len",
            "2-5",
            "--batch",
            "4",
            "--repeats",
            "2",
            "--kv-budget-mib",
            "1",
            "--breakdown",
            "--json",
            "--out",
            str(tmp_path / "r.json"),
        ],
    )
    assert res.exit_code == 0, res.output
    out = json.loads((tmp_path / "r.json").read_text())
    keys = {f"{m}/{c}" for m in ("vanilla", "mor") for c in ("hf_static", "engine_lockstep", "engine_depthwise")}
    assert set(out["configs"]) == keys
    for cfg in out["configs"].values():
        assert cfg["tokens_per_s"] > 0 and len(cfg["tokens_per_s_runs"]) == 2
        assert 0 < cfg["latency_median_s"] <= cfg["latency_p95_s"]
    for key in ("compute_ceiling", "fraction_of_ceiling", "speedup_vs_hf_static", "average_depth"):
        assert out[key] > 0
    assert out["workload"]["requests"] == 6
    assert out["average_depth"] >= 1.0 and out["average_depth"] <= 2.0  # 2 recursions: depth in [1, 2]
    # the ceiling is the ratio of the FLOPs the models declared on the same workload
    c = out["counts"]
    assert out["compute_ceiling"] == pytest.approx(
        c["vanilla"]["flops_per_generated_token"] / c["mor"]["flops_per_generated_token"]
    )
    kv = out["kv"]
    assert kv["vanilla"]["over_vanilla"] == 1.0 and kv["vanilla"]["block_ratio_measured"] == 1.0
    assert kv["shared"]["block_ratio_measured"] == pytest.approx(1 / 2)  # N_r = 2: one stream of 2
    assert kv["shared"]["block_ratio_expected_spec4"] == 0.5
    assert kv["recursion_wise"]["block_ratio_expected_spec4"] == 0.75
    admitted = [kv[k]["admitted_sequences"] for k in ("shared", "recursion_wise", "vanilla")]
    assert admitted[0] > admitted[2] >= 1 and admitted[0] >= admitted[1] >= admitted[2]  # 1 MiB holds many
    assert set(out["breakdown"]) == {f"{m}/engine_{p}" for m in ("vanilla", "mor") for p in ("lockstep", "depthwise")}
    assert all(b["seconds"] > 0 and b["mlp"] > 0 for b in out["breakdown"].values())


def test_bench_decode_warms_every_timed_path_before_timing(folders, monkeypatch):
    """HF static and both engine policies each run a short warm-up on both models before the first timed run."""
    from depthmux.recipes import decode_bench as db

    calls: list[tuple[str, int, int]] = []  # (path, model, requests) of the runs not counting FLOPs
    hf_static, engine = db.run_hf_static, db.run_engine

    def hf_recorded(model, work, batch, pad):
        calls.append(("hf_static", id(model), len(work)))
        return hf_static(model, work, batch, pad)

    def engine_recorded(model, work, policy, batch, flops=None):
        if flops is None:  # the FLOP-counting runs are untimed
            calls.append((f"engine_{policy}", id(model), len(work)))
        return engine(model, work, policy, batch, flops=flops)

    monkeypatch.setattr(db, "run_hf_static", hf_recorded)
    monkeypatch.setattr(db, "run_engine", engine_recorded)
    vanilla, mor = folders
    spec = db.DecodeBenchSpec(
        model=str(vanilla), mor_model=str(mor), num_requests=6, prompt_len=(3, 10), output_len=(2, 5), batch=4,
        repeats=1, kv_budget_mib=1,
    )  # fmt: skip
    db.run_decode_bench(spec, log=lambda *a: None)
    first_timed = next(i for i, c in enumerate(calls) if c[2] == 6)
    timed = {c[:2] for c in calls[first_timed:] if c[2] == 6}
    warmed = {c[:2] for c in calls[:first_timed] if c[2] == 2}
    assert len(timed) == 6 and timed <= warmed, (timed - warmed, calls[:first_timed])


def test_bench_decode_missing_mor_model_says_how_to_create_it(folders, tmp_path, capsys, monkeypatch):
    vanilla, _ = folders
    monkeypatch.chdir(tmp_path)  # the default --mor-model is a relative folder: missing here
    with pytest.raises(SystemExit) as e:
        main(["lm", "bench-decode", "--model", str(vanilla), "--quick"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "build-mor" in err
    res = runner.invoke(
        app, ["bench-decode", "--model", str(vanilla), "--mor-model", str(tmp_path / "nope"), "--prompt-len", "10-3"]
    )
    assert res.exit_code != 0


@pytest.fixture
def tokenized_folder(tmp_path, tiny_recursive_factory):
    tok = load_tokenizer("smollm2")
    model = tiny_recursive_factory(
        vocab_size=len(tok),
        num_hidden_layers=4,
        num_recursions=2,
        mor_router="expert",
        eos_token_id=tok.eos_token_id,
        max_position_embeddings=64,
    ).eval()
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    return tmp_path / "m", tok


def test_generate_streams_every_prompt_in_order(tokenized_folder, tmp_path):
    folder, _ = tokenized_folder
    prompts = ["To be, or not", "Friends, Romans"]
    file = tmp_path / "p.txt"
    file.write_text("All the world\n\n")
    res = runner.invoke(
        app,
        [
            "generate",
            *prompts,
            "--file",
            str(file),
            "--model",
            str(folder),
            "--max-new-tokens",
            "6",
            "--depth-policy",
            "lockstep",
        ],
    )
    assert res.exit_code == 0, res.output
    want = LLM.from_pretrained(folder).generate(prompts + ["All the world"], SamplingParams(max_new_tokens=6))
    lines = res.output.splitlines()
    assert len(lines) == 3
    for i, (line, w) in enumerate(zip(lines, want, strict=True)):
        assert line == f"[{i}] {w.prompt}{w.text}"


@pytest.mark.parametrize(
    "args, match",
    [
        ([], "no prompts"),
        (["hi", "--max-new-tokens", "0"], "max_new_tokens"),
        (["hi", "--top-p", "0"], "top_p"),
        (["hi", "--stop", "To be or"], "tokens"),
        (["hi", "--depth-policy", "diagonal"], "depth_policy"),
    ],
)
def test_generate_bad_input_is_one_line(tokenized_folder, capsys, args, match):
    folder, _ = tokenized_folder
    with pytest.raises(SystemExit) as e:
        main(["lm", "generate", "--model", str(folder), *args])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and match in err


def test_generate_unknown_model_folder(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["lm", "generate", "hello", "--model", str(tmp_path / "nope")])
    assert e.value.code == 2 and "not found" in capsys.readouterr().err


def test_prefill_groups_bound_padding_and_keep_every_chunk():
    from depthmux.engine.runner import MAX_PREFILL_PADDING, prefill_groups
    from depthmux.engine.scheduler import PrefillChunk

    lengths = [256, 17, 250, 16, 120, 130, 64, 3, 240, 1]
    chunks = [PrefillChunk(f"r{i}", 0, [1] * n, True) for i, n in enumerate(lengths)]
    groups = prefill_groups(chunks)
    assert sorted(c.request_id for g in groups for c in g) == sorted(c.request_id for c in chunks)
    for g in groups:
        M = max(len(c.token_ids) for c in g)
        assert len(g) * M - sum(len(c.token_ids) for c in g) <= MAX_PREFILL_PADDING * len(g) * M
    assert len(groups) < len(chunks)  # similar lengths share a call
    assert len(prefill_groups(chunks, max_padding=1.0)) == 1


def test_route_without_losses_decides_the_same(tiny_recursive_factory):
    import torch

    for router in ("expert", "token"):
        model = tiny_recursive_factory(num_hidden_layers=8, num_recursions=3, mor_router=router).eval()
        body = model.model
        ids = torch.randint(3, 61, (2, 9))
        ctx = body.make_context(ids)
        x = body.prefix(body.embed(ids), ctx)
        with torch.no_grad():
            a = body.route(x, 0, ctx, None, routing="causal")
            b = body.route(x, 0, ctx, None, routing="causal", losses=False)
        assert torch.equal(a.selected, b.selected) and a.aux_losses and not b.aux_losses
        for name in ("gate", "depth", "weight"):
            ta, tb = getattr(a, name), getattr(b, name)
            assert (ta is None and tb is None) or torch.equal(ta, tb)


def test_bench_decode_reversed_length_range_names_both_bounds(capsys):
    with pytest.raises(SystemExit) as e:
        main(["lm", "bench-decode", "--quick", "--prompt-len", "50-10"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--prompt-len '50-10': the upper bound 10 is below the lower bound 50" in err


def test_bench_decode_times_also_models_in_the_same_process(folders, tmp_path, tiny_llama_factory, capsys):
    vanilla, mor = folders
    tiny_llama_factory(vocab_size=64, num_hidden_layers=2, max_position_embeddings=64).eval().save_pretrained(
        tmp_path / "short"
    )
    args = ["bench-decode", "--model", str(vanilla), "--mor-model", str(mor), "--num-requests", "4",
            "--prompt-len", "3-8", "--output-len", "2-4", "--batch", "4", "--repeats", "2", "--json"]  # fmt: skip
    res = runner.invoke(app, [*args, "--also", str(tmp_path / "short"), "--also", str(mor)])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout[res.stdout.index("{") :])
    assert out["also"] == {"also1": str(tmp_path / "short"), "also2": str(mor)}
    models = ("vanilla", "mor", "also1", "also2")
    assert set(out["configs"]) == {
        f"{m}/{c}" for m in models for c in ("hf_static", "engine_lockstep", "engine_depthwise")
    }
    tps = {k: v["tokens_per_s"] for k, v in out["configs"].items()}
    assert out["over_vanilla"]["also1"]["engine_lockstep"] == pytest.approx(
        tps["also1/engine_lockstep"] / tps["vanilla/engine_lockstep"]
    )
    c = out["counts"]
    # declared FLOPs: 2 of the vanilla's 4 layers cost less; the MoR timed twice counts the same
    assert c["also1"]["flops_per_generated_token"] < c["vanilla"]["flops_per_generated_token"]
    assert c["also2"]["flops_per_generated_token"] == pytest.approx(c["mor"]["flops_per_generated_token"])
    # decode tokens are the generated ones fed back (all but each request's last); prefill = the prompts
    w = out["workload"]
    for m in models:
        dec, every = c[m]["decode_exits_by_depth"], c[m]["exits_by_depth"]
        assert sum(dec) == w["generated_tokens"] - w["requests"]
        assert sum(every) - sum(dec) == w["prompt_tokens"]
        assert c[m]["decode_average_depth"] == pytest.approx(sum(i * n for i, n in enumerate(dec)) / sum(dec))
    tiny_llama_factory(vocab_size=80, num_hidden_layers=2).save_pretrained(tmp_path / "other-vocab")
    for path, message in ((tmp_path / "other-vocab", "vocabulary 80"), (tmp_path / "nope", "--also")):
        with pytest.raises(SystemExit) as e:
            main(["lm", *args, "--also", str(path)])
        assert e.value.code == 2 and message in capsys.readouterr().err
