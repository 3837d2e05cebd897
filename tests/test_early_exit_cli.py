"""``depthmux ee train / eval`` on a tiny LLaMA with its own BPE tokenizer: FREE training through the generic
loop, exact ``--resume``, held-out NLL of both exits, bad options as one line (exit 2) before any work."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from depthmux.cli import main
from depthmux.data.text import load_corpus, train_bpe_tokenizer
from depthmux.early_exit import EarlyExitForCausalLM, ShallowExit
from depthmux.lm import evaluate_lm, load_lm


@pytest.fixture
def llama_dir(tmp_path, corpus, tiny_llama_factory):
    """A tiny 4-layer LLaMA saved with a 300-token BPE tokenizer (the source model of ``ee train --from``)."""
    tok = train_bpe_tokenizer(load_corpus(str(corpus)), 300)
    path = tmp_path / "llama"
    tiny_llama_factory(vocab_size=len(tok), num_hidden_layers=4, eos_token_id=tok.eos_token_id).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def run_cli(args, capsys):
    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = e.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def train_args(out, corpus, llama_dir, *extra):
    return [
        "ee",
        "train",
        "--out",
        str(out),
        "--from",
        str(llama_dir),
        "--corpus",
        str(corpus),
        "--exit-layer",
        "2",
        "--steps",
        "4",
        "--batch-size",
        "2",
        "--block-size",
        "32",
        "--warmup",
        "1",
        "--lr",
        "1e-3",
        "--checkpoint-every",
        "2",
        "--no-progress",
        *extra,
    ]


def test_train_eval_and_exact_resume(tmp_path, corpus, llama_dir, capsys, monkeypatch):
    out = tmp_path / "run"
    code, stdout, err = run_cli(train_args(out, corpus, llama_dir), capsys)
    assert code == 0, err
    assert "shallow-deep agreement" in stdout
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert set(log[0]["aux"]) == {"ce_shallow", "ce_deep", "mse"} and "exit_agreement" in log[0]["router_stats"]
    model = load_lm(out)
    assert isinstance(model, EarlyExitForCausalLM) and model.config.exit_layer == 2
    full = load_file(out / "model" / "model.safetensors")

    # a run killed after its step-2 checkpoint, resumed: the same weights as the uninterrupted one
    cut = tmp_path / "cut"
    shutil.copytree(out, cut)
    shutil.rmtree(cut / "model")
    shutil.rmtree(cut / "checkpoints" / "step-000004")
    code, _, err = run_cli(["ee", "train", "--out", str(cut), "--resume", "--no-progress"], capsys)
    assert code == 0, err
    resumed = load_file(cut / "model" / "model.safetensors")
    assert full.keys() == resumed.keys() and all(torch.equal(full[k], resumed[k]) for k in full)

    code, stdout, err = run_cli(["ee", "eval", "--model", str(out), "--json", "--max-blocks", "4"], capsys)
    assert code == 0, err
    res = json.loads(stdout)
    assert res["exit_layer"] == 2 and res["num_layers"] == 4 and 0.0 <= res["exit_agreement"] <= 1.0
    assert res["deep"]["nll"] > 0 and res["shallow"]["nll"] > 0 and res["deep"]["nll"] != res["shallow"]["nll"]
    assert res["params"]["total"] == model.parameter_counts()["total"]

    from depthmux.engine import LLM

    runs: dict[str, list[int]] = {}  # the tokens each configuration generated, call by call (EarlyExitLLM is an LLM)
    generate = LLM.generate

    def recorded(self, prompts, params=None, *a, **k):
        policy = getattr(self, "policy", None)
        name = (
            "deep"
            if policy is None
            else f"{policy.mode}/{policy.threshold}/{policy.draft_tokens}/{policy.adaptive is None}"
        )
        runs.setdefault(name, []).append(params.max_new_tokens)
        return generate(self, prompts, params, *a, **k)

    monkeypatch.setattr(LLM, "generate", recorded)
    plot = tmp_path / "bench.png"
    code, stdout, err = run_cli(
        [
            "ee",
            "bench",
            "--model",
            str(out),
            "--thresholds",
            "1.0,0.05",
            "--deltas",
            "0.2",
            "--draft-tokens",
            "2",
            "--batch-sizes",
            "1,3",
            "--prompts",
            "3",
            "--prompt-tokens",
            "8",
            "--max-new-tokens",
            "5",
            "--plot",
            str(plot),
            "--json",
        ],
        capsys,
    )
    assert code == 0, err
    bench = json.loads(stdout)
    rows = {(r["batch_size"], r["config"]): r for r in bench["results"]}
    assert len(rows) == 2 * 5 and plot.is_file()
    # at each batch size every policy is warmed up (a few tokens) before its timed run; the deep model on the full run
    assert runs.pop("deep") == [5] * 4 and len(runs) == 4 and all(r == [4, 5, 4, 5] for r in runs.values()), runs
    for b in (1, 3):  # nothing exits at 1.0 and speculation is exact: both equal the deep model's output
        assert rows[b, "deep"]["speedup_vs_deep"] == 1.0
        assert rows[b, "exit@1.0"]["exact"] == 1.0 and rows[b, "exit@1.0"]["exit_rate"] == 0.0
        assert rows[b, "speculative@2"]["exact"] == 1.0 and rows[b, "speculative@2"]["token_agreement"] == 1.0
        assert 0.0 <= rows[b, "adaptive@0.2"]["exit_rate"] <= 1.0
        assert "wrong_exit_rate" not in rows[b, "exit@1.0"]  # only runs that compared exits with the deep model


def test_shallow_exit_view_evaluates_the_shallow_model(tiny_llama_factory):
    from depthmux.data.text import PackedBlocks
    from depthmux.early_exit import from_llama

    model = from_llama(tiny_llama_factory(num_hidden_layers=4), exit_layer=1)
    ids = torch.randint(0, 64, (3, 16), generator=torch.Generator().manual_seed(0))
    pos = torch.arange(16).expand(3, 16).clone()
    labels = ids.clone()
    labels[:, 0] = -100
    blocks = PackedBlocks(input_ids=ids, position_ids=pos, labels=labels)
    shallow = evaluate_lm(ShallowExit(model), blocks, batch_size=2)
    with torch.no_grad():
        ref = model(ids, position_ids=pos, labels=labels, use_cache=False).aux_losses["ce_shallow"]
    assert shallow["nll"] == pytest.approx(float(ref), rel=1e-5)
    counts = ShallowExit(model).parameter_counts()
    per_layer = sum(p.numel() for p in model.model.layers[0].parameters())
    assert counts["total"] == model.parameter_counts()["total"] - 3 * per_layer


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--exit-layer", "0", "--exit-layer must be an integer >= 1"),
        ("--exit-layer", "4", r"exit layer L_s must be an integer in 1..3"),
        ("--alpha", "-1", "--alpha must be a finite number"),
        ("--alpha", "nan", "--alpha must be a finite number"),
        ("--steps", "0", "--steps must be"),
        ("--block-size", "1", "--block-size must be"),
        ("--from", "/nonexistent/model", "model not found"),
    ],
)
def test_bad_options_are_one_line_before_any_work(tmp_path, corpus, llama_dir, capsys, option, value, message):
    out = tmp_path / "run"
    code, _, err = run_cli(train_args(out, corpus, llama_dir, option, value), capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], err
    assert not (out / "train_config.json").exists()


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--thresholds", "1.5", "exit threshold must be a finite number in"),
        ("--thresholds", "a,b", "--thresholds must be a comma-separated list of floats"),
        ("--deltas", "1", "delta (bound on the wrong-exit probability) must be"),
        ("--draft-tokens", "0", "--draft-tokens must be an integer >= 1"),
        ("--batch-sizes", "", "--batch-sizes needs at least one batch size"),
        ("--max-new-tokens", "0", "--max-new-tokens must be an integer >= 1"),
        ("--device", "gpu7", "bad --device"),
    ],
)
def test_bench_bad_options_are_one_line(tmp_path, capsys, option, value, message):
    code, _, err = run_cli(["ee", "bench", "--model", str(tmp_path), option, value], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and message in lines[0], err


def test_eval_of_a_model_without_an_exit_head_is_one_line(tmp_path, corpus, llama_dir, capsys):
    code, _, err = run_cli(["ee", "eval", "--model", str(llama_dir), "--corpus", str(corpus)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "needs a model with a shallow exit" in err


@pytest.mark.parametrize("cmd", [["ee"], ["ee", "train"], ["ee", "eval"], ["ee", "bench"]])
def test_help(cmd, capsys):
    code, out, _ = run_cli([*cmd, "--help"], capsys)
    assert code == 0 and "Usage" in out
