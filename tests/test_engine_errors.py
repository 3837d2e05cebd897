"""Engine bad input and loading (SPEC 5): one-line DepthmuxError for each user mistake."""

from __future__ import annotations

import pytest
import torch

from depthmux.engine import LLM, SamplingParams
from depthmux.errors import DepthmuxError


@pytest.fixture
def llm(tiny_recursive_factory):
    return LLM(
        tiny_recursive_factory(
            max_position_embeddings=32, num_hidden_layers=8, num_recursions=3, mor_router="expert"
        ).eval()
    )


def one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert msg and "\n" not in msg
    return msg


@pytest.mark.parametrize(
    "prompt, match",
    [
        ([], "empty prompt"),
        ("", "tokenizer"),
        ([1] * 33, "longer than"),
        ([1, 99], r"token ids must be in"),
        ([1.5], "string or a list"),
    ],
)
def test_bad_prompts(llm, prompt, match):
    with pytest.raises(DepthmuxError, match=match) as e:
        llm.add_request(prompt)
    one_line(e)
    assert not llm.has_unfinished_requests()


def test_bad_sampling_and_budget(llm, tiny_recursive_factory):
    with pytest.raises(DepthmuxError, match="max_new_tokens") as e:
        llm.generate([1, 2, 3], SamplingParams(max_new_tokens=0))
    one_line(e)
    with pytest.raises(DepthmuxError, match="too small") as e:  # not even the null and trash pages
        LLM(tiny_recursive_factory(max_position_embeddings=32), kv_budget_bytes=1024)
    one_line(e)
    tiny = LLM(tiny_recursive_factory(max_position_embeddings=32), kv_budget_bytes=8192)
    with pytest.raises(DepthmuxError, match="too small for one request") as e:
        tiny.add_request([1, 2, 3], SamplingParams(max_new_tokens=4))
    one_line(e)
    with pytest.raises(DepthmuxError, match="depth_policy"):
        LLM(tiny_recursive_factory(), depth_policy="diagonal")
    with pytest.raises(DepthmuxError, match="cannot serve"):
        LLM(object())


def test_prompt_at_the_context_length_generates_one_token(llm):
    out = llm.generate([1] * 32, SamplingParams(max_new_tokens=5, ignore_eos=True))[0]
    assert len(out.token_ids) == 1 and out.finish_reason == "length"


def test_unknown_model_folder_is_one_line_error(tmp_path):
    with pytest.raises(DepthmuxError, match="not found") as e:
        LLM.from_pretrained(tmp_path / "nope")
    one_line(e)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DepthmuxError) as e:
        LLM.from_pretrained(tmp_path / "empty")
    one_line(e)


def test_from_pretrained_serves_saved_recursive_and_llama_folders(tmp_path, tiny_recursive_factory, tiny_llama_factory):
    rec = tiny_recursive_factory(num_hidden_layers=8, num_recursions=3, mor_router="token").eval()
    rec.save_pretrained(tmp_path / "rec")
    hf = tiny_llama_factory().eval()
    hf.save_pretrained(tmp_path / "llama")
    prompt = [4, 5, 6, 7]
    params = SamplingParams(max_new_tokens=6, ignore_eos=True)
    for model, folder in ((rec, "rec"), (hf, "llama")):
        loaded = LLM.from_pretrained(tmp_path / folder, depth_policy="lockstep", max_batch_items=8)
        assert loaded.generate(prompt, params)[0].token_ids == LLM(model).generate(prompt, params)[0].token_ids
    # a converted LLaMA is served in its own dtype
    assert LLM(hf.to(torch.float64)).model.dtype == torch.float64


# --- issue 20 (engine)
# Each row failed on main before this branch (checked with PYTHONPATH=/work/main/src): a traceback
# (overflow, int64 seeds, stop=5, --kv-budget-mib inf, --out a folder / unwritable), a refusal only
# after the whole benchmark (--kv-budget-mib 0.0001), or a hang (--kv-budget-mib 1e7).


@pytest.mark.parametrize("temperature", [1e-300, 1e-45, 1e-6])
def test_tiny_temperatures_decode_greedily(llm, temperature):
    greedy = llm.generate([1, 2, 3], SamplingParams(max_new_tokens=6, ignore_eos=True))[0].token_ids
    params = SamplingParams(max_new_tokens=6, ignore_eos=True, temperature=temperature, seed=3)
    assert params.greedy and llm.generate([1, 2, 3], params)[0].token_ids == greedy


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: SamplingParams(seed=2**64), "seed"),
        (lambda: SamplingParams(seed=2**63), "seed"),
        (lambda: SamplingParams(seed=-1), "seed"),
        (lambda: SamplingParams(stop=5), "stop must be a string or a list of strings"),
        (lambda: SamplingParams(stop=[b"x"]), "stop must hold"),
        (lambda: SamplingParams(stop=[""]), "stop must hold"),
        (lambda: SamplingParams(stop_token_ids=5), "stop_token_ids"),
    ],
)
def test_bad_seeds_and_stops(make, match):
    with pytest.raises(DepthmuxError, match=match) as e:
        make()
    one_line(e)


def test_engine_seed_outside_int64_is_refused(tiny_recursive_factory):
    for seed in (2**64, 2**63, -5):
        with pytest.raises(DepthmuxError, match="seed") as e:
            LLM(tiny_recursive_factory(), seed=seed)
        one_line(e)


def test_admitted_sequences_of_a_huge_budget_is_computed_not_counted(tiny_recursive_factory):
    import time

    from depthmux.recipes.decode_bench import BenchRequest, admitted_sequences

    model = tiny_recursive_factory(max_position_embeddings=64)
    work = [BenchRequest([1] * 20, 10), BenchRequest([2] * 5, 30)]
    t0 = time.monotonic()
    n = admitted_sequences(model, work, int(1e7 * 2**20), 4)
    assert time.monotonic() - t0 < 5  # looping once per admitted sequence would take minutes here
    spec = LLM(model).kv.spec
    per = [spec.reservation_bytes(30), spec.reservation_bytes(35)]
    assert n in (2 * (int(1e7 * 2**20) // sum(per)), 2 * (int(1e7 * 2**20) // sum(per)) + 1)
    assert admitted_sequences(model, work, 1, 4) == 1  # the first is always admitted (the budget check is earlier)


def _cli(argv, capsys):
    from depthmux.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip()
    return e.value.code, err


@pytest.fixture
def bench_folders(tmp_path, tiny_llama_factory, tiny_recursive_factory):
    vanilla = tiny_llama_factory(vocab_size=64, num_hidden_layers=4, max_position_embeddings=64).eval()
    vanilla.save_pretrained(tmp_path / "vanilla")
    mor = tiny_recursive_factory(
        vocab_size=64, num_hidden_layers=4, num_recursions=2, mor_router="expert", max_position_embeddings=64
    ).eval()
    mor.save_pretrained(tmp_path / "mor")
    return tmp_path


BENCH = ["lm", "bench-decode", "--model", "{d}/vanilla", "--mor-model", "{d}/mor", "--num-requests", "4",
         "--prompt-len", "3-8", "--output-len", "2-4", "--batch", "2", "--repeats", "1"]  # fmt: skip


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--kv-budget-mib", "inf"], "--kv-budget-mib must be a number"),
        (["--kv-budget-mib", "nan"], "--kv-budget-mib must be a number"),
        (["--kv-budget-mib", "1e30"], "--kv-budget-mib must be a number"),
        (["--kv-budget-mib", "0.0001"], "cannot hold one request"),
        (["--out", "{d}"], "is a folder"),
        (["--out", "{d}/vanilla/config.json/r.json"], "--out"),
        # --- hostile pass (hfix-a): lengths beyond the context were allocated (5 GB) before failing
        (["--prompt-len", "4-100000"], "longer than the models' context of 64 tokens"),
    ],
)
def test_bench_decode_options_are_checked_before_the_benchmark(bench_folders, extra, match, capsys, monkeypatch):
    from depthmux.recipes import decode_bench

    ran = []
    monkeypatch.setattr(decode_bench, "run_engine", lambda *a, **k: ran.append(1) or (_ for _ in ()).throw(SystemExit))
    argv = [a.format(d=bench_folders) for a in [*BENCH, *extra]]
    code, err = _cli(argv, capsys)
    assert code == 2 and err.startswith("error: ") and "\n" not in err and match in err, err
    assert not ran  # refused before any engine run (warm-up included)


def test_generate_cli_seed_outside_int64_and_a_tiny_temperature(tmp_path, tiny_llama_factory, capsys):
    from depthmux.lm import load_saved_tokenizer, pretrained_model_dir

    tok = load_saved_tokenizer(pretrained_model_dir("smollm2"))
    tiny_llama_factory(vocab_size=len(tok)).save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    capsys.readouterr()  # a first use converts the packaged SmolLM2 (a progress bar on stderr): not the case's output
    base = ["lm", "generate", "Hello there", "--model", str(tmp_path / "m"), "--max-new-tokens", "4"]
    code, err = _cli([*base, "--seed", str(2**64)], capsys)
    assert code == 2 and err.startswith("error: ") and "seed" in err and "\n" not in err
    from depthmux.cli import main

    outs = []
    for t in ("0", "1e-300", "1e-45"):
        try:
            main([*base, "--temperature", t])
        except SystemExit as e:
            assert e.code in (0, None), capsys.readouterr().err
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1] == outs[2] and outs[0].strip()


# --- hostile pass (hfix-a)
@pytest.mark.parametrize("prompts", [b"hello", None, 5, {"text": "hi"}])
def test_prompts_of_the_wrong_type_are_one_line_errors(llm, prompts):
    with pytest.raises(DepthmuxError, match=r"prompts must be|a prompt must be") as e:
        llm.generate(prompts, SamplingParams(max_new_tokens=3))
    assert type(prompts).__name__ in one_line(e)
    assert not llm.has_unfinished_requests()


def test_a_lone_surrogate_in_a_string_prompt_is_refused(tiny_recursive_factory, tokenizer):
    llm = LLM(tiny_recursive_factory().eval(), tokenizer)
    with pytest.raises(DepthmuxError, match="valid text") as e:
        llm.generate("caf\udce9", SamplingParams(max_new_tokens=3))
    one_line(e)


@pytest.mark.parametrize("stop", [99, 999999, 2**64])
def test_stop_token_ids_outside_the_vocabulary_are_refused(llm, stop):
    with pytest.raises(DepthmuxError, match="stop token ids must be in") as e:
        llm.add_request([1, 2], SamplingParams(max_new_tokens=3, stop_token_ids=[stop]))
    one_line(e)
    assert not llm.has_unfinished_requests()


def test_a_pure_cycle_model_without_unique_layers_decodes(tiny_recursive_factory):
    """No prefix/suffix layers: the main KV stream has no roles (its pages cost 0 bytes)."""
    model = tiny_recursive_factory(sharing="cycle", num_hidden_layers=4, num_recursions=2).eval()
    llm = LLM(model)
    assert llm.kv.spec.num_main_layers == 0
    out = llm.generate([1, 2, 3], SamplingParams(max_new_tokens=3, ignore_eos=True))[0]
    assert len(out.token_ids) == 3
