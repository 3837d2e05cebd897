"""Several training processes (DDP over gloo on CPU): the LM loop with 2 processes follows the same
trajectory as 1 process at the same global batch, only the main process writes the run folder, and a
resume with another process count keeps the global batch (or is refused with one line).

Tolerance: the loss history of 2 processes equals 1 process within 1e-5 (float reduction order;
measured ~1e-6), held-out NLL within 1e-5, FLOP and token counts exactly.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from depthmux.data.text import pack_documents, split_documents, train_bpe_tokenizer
from depthmux.errors import DepthmuxError
from depthmux.training.lm import LMTrainConfig, global_batch_split, train_lm

REPO = Path(__file__).resolve().parents[1]
DOCS = [f"document {i}: " + " ".join(f"w{(i * 7 + j) % 23}" for j in range(20 + i % 9)) for i in range(40)]
TOL = 1e-5


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def assert_same_history(a: list[dict], b: list[dict]) -> None:
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for x, y in zip(a, b, strict=True):
        if "loss" in x:
            assert abs(x["loss"] - y["loss"]) < TOL, (x, y)
            assert x["train_flops"] == y["train_flops"] and x["tokens"] == y["tokens"]
        if "eval" in x:
            assert abs(x["eval"]["nll"] - y["eval"]["nll"]) < TOL, (x, y)


def test_global_batch_split():
    assert global_batch_split(4, 1, 1) == (4, 4)
    assert global_batch_split(2, 2, 2) == (4, 2)
    assert global_batch_split(2, 2, 1) == (4, 4)  # resumed on fewer processes: same global batch
    assert global_batch_split(4, 1, 2) == (4, 2)
    with pytest.raises(DepthmuxError, match=r"3 blocks.*2 processes cannot split"):
        global_batch_split(3, 1, 2)


def _data():
    tok = train_bpe_tokenizer(DOCS, vocab_size=300)
    train_docs, eval_docs = split_documents(DOCS, 0.2, seed=0)
    return tok, pack_documents(train_docs, tok, 32), pack_documents(eval_docs, tok, 32)


def _tiny_model(vocab: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=vocab,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
        )
    )


def _train(out: str, batch_size: int) -> None:
    """One process's body (also run by each of ``debug_launcher``'s forked processes)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # a fork inherits the parent's state
    torch.set_num_threads(1)
    tok, train, held = _data()
    cfg = LMTrainConfig(
        out_dir=out, steps=6, batch_size=batch_size, lr=3e-3, warmup_steps=1, checkpoint_every=3, progress=False
    )
    train_lm(_tiny_model(tok.vocab_size), train, held, cfg, tokenizer=tok)
    AcceleratorState._reset_state(reset_partial_state=True)


def test_two_processes_follow_one(tmp_path):
    """``accelerate.debug_launcher`` (2 forked processes, gloo): the same history as 1 process with
    the same global batch; the run folder is written once (one log, one lock holder)."""
    from accelerate import debug_launcher

    _train(str(tmp_path / "one"), batch_size=4)
    debug_launcher(_train, args=(str(tmp_path / "two"), 2), num_processes=2)
    one, two = read_log(tmp_path / "one"), read_log(tmp_path / "two")
    assert_same_history(one, two)
    assert json.loads((tmp_path / "two" / "train_config.json").read_text())["processes"] == 2
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == ["step-000003", "step-000006"]


# ------------------------------------------------------------------ the CLI under `accelerate launch`


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(processes: int, *args: str) -> subprocess.CompletedProcess:
    """``depthmux ARGS`` under ``accelerate launch --multi_gpu --num_processes N`` (CPU: gloo)."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "depthmux", *args]
    if processes > 1:
        cmd = [
            sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(_free_port()), "-m", "depthmux", *args,
        ]  # fmt: skip
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=REPO)


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    paras = [f"paragraph {i}: " + " ".join(f"word{(i * 5 + j) % 17}" for j in range(25)) for i in range(60)]
    path.write_text("\n\n".join(paras))
    return path


LM_ARGS = [
    "--tokenizer", "bpe:300", "--hidden", "32", "--layers", "4", "--heads", "4", "--sharing", "middle_cycle",
    "--recursions", "2", "--router", "expert", "--steps", "6", "--block-size", "32", "--warmup", "1",
    "--checkpoint-every", "3", "--no-progress",
]  # fmt: skip


@pytest.mark.slow
def test_lm_train_cli_two_processes_and_resume_across_counts(tmp_path, corpus):
    """``lm train`` (MoR, expert router) with 2 processes equals 1 process at the same global batch;
    a 2-process run resumed on 1 process (and the reverse) reproduces the history; a global batch
    that the new process count cannot split is refused with one line."""
    one, two = tmp_path / "one", tmp_path / "two"
    res = launch(1, "lm", "train", "--out", str(one), "--corpus", str(corpus), "--batch-size", "4", *LM_ARGS)
    assert res.returncode == 0, res.stderr
    res = launch(2, "lm", "train", "--out", str(two), "--corpus", str(corpus), "--batch-size", "2", *LM_ARGS)
    assert res.returncode == 0, res.stderr[-3000:]
    assert_same_history(read_log(one), read_log(two))
    assert read_log(one)[-1]["eval"]["router_stats"]["causal_agreement"] == pytest.approx(
        read_log(two)[-1]["eval"]["router_stats"]["causal_agreement"], abs=TOL
    )

    for src, processes in ((two, 1), (one, 2)):  # killed after step 3, resumed on the other count
        cut = tmp_path / f"cut-{processes}"
        shutil.copytree(src, cut)
        shutil.rmtree(cut / "model")
        shutil.rmtree(cut / "checkpoints" / "step-000006")
        res = launch(processes, "lm", "train", "--out", str(cut), "--resume", "--no-progress")
        assert res.returncode == 0, res.stderr[-3000:]
        assert_same_history(read_log(one), read_log(cut))

    odd = tmp_path / "odd"
    res = launch(1, "lm", "train", "--out", str(odd), "--corpus", str(corpus), "--batch-size", "3", *LM_ARGS)
    assert res.returncode == 0, res.stderr
    shutil.rmtree(odd / "checkpoints" / "step-000006")
    res = launch(2, "lm", "train", "--out", str(odd), "--resume", "--no-progress")
    assert res.returncode != 0
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    assert errors and "global batch is 3 blocks" in errors[0] and "Traceback" not in "\n".join(errors)


@pytest.mark.slow
def test_ee_train_cli_two_processes(tmp_path, corpus, tiny_llama_factory):
    """``ee train`` (FREE shallow-deep loss) with 2 processes equals 1 process at the same global batch,
    held-out shallow-deep agreement included (reduced over processes)."""
    from depthmux.data.text import load_corpus

    tok = train_bpe_tokenizer(load_corpus(str(corpus)), 300)
    src = tmp_path / "llama"
    tiny_llama_factory(vocab_size=len(tok), num_hidden_layers=4, eos_token_id=tok.eos_token_id).save_pretrained(src)
    tok.save_pretrained(src)
    args = ["ee", "train", "--from", str(src), "--corpus", str(corpus), "--exit-layer", "2", "--steps", "4"]
    args += ["--block-size", "32", "--warmup", "1", "--no-progress"]
    res = launch(1, *args, "--out", str(tmp_path / "one"), "--batch-size", "4")
    assert res.returncode == 0, res.stderr
    res = launch(2, *args, "--out", str(tmp_path / "two"), "--batch-size", "2")
    assert res.returncode == 0, res.stderr[-3000:]
    one, two = read_log(tmp_path / "one"), read_log(tmp_path / "two")
    assert_same_history(one, two)
    assert one[-1]["eval"]["router_stats"]["exit_agreement"] == pytest.approx(
        two[-1]["eval"]["router_stats"]["exit_agreement"], abs=TOL
    )
