"""Both training loops on the shared RunFolder: refusals, non-finite guards, exact resume incl. the log."""

from __future__ import annotations

import json
import random

import pytest
import torch

from depthmux.data import ClassificationDataset
from depthmux.data.text import pack_documents, split_documents, train_bpe_tokenizer
from depthmux.errors import DepthmuxError
from depthmux.multiplexing import MultiplexedClassifier, MuxConfig
from depthmux.multiplexing.features import build_feature_cache
from depthmux.multiplexing.heads import LinearProbeHead
from depthmux.training.lm import LMTrainConfig, list_checkpoints, train_lm
from depthmux.training.mux import MuxTrainConfig, train_mux
from depthmux.utils.run_folder import RunFolder

DOCS = [f"document {i}: " + " ".join(f"w{(i * 7 + j) % 23}" for j in range(20 + i % 9)) for i in range(40)]
WORDS = ["good", "bad", "great", "awful", "fine", "boring", "fun", "dull", "movie", "plot", "the", "a"]


@pytest.fixture(scope="module")
def lm_data():
    tok = train_bpe_tokenizer(DOCS, vocab_size=300)
    train_docs, eval_docs = split_documents(DOCS, 0.2, seed=0)
    return tok, pack_documents(train_docs, tok, 32), pack_documents(eval_docs, tok, 32)


def toy_data(n: int, seed: int) -> ClassificationDataset:
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(n):
        words = rng.choices(WORDS, k=rng.randint(2, 8))
        texts.append(" ".join(words))
        labels.append(int(sum(w in ("good", "great", "fine", "fun") for w in words) >= 1))
    return ClassificationDataset("toy", "train", texts, labels, ["neg", "pos"])


@pytest.fixture
def caches(tiny_backbone):
    return (
        build_feature_cache(tiny_backbone, toy_data(48, 0), [0, 1]),
        build_feature_cache(tiny_backbone, toy_data(16, 1), [0, 1]),
    )


def mux_model(backbone):
    torch.manual_seed(0)
    head = LinearProbeHead(backbone.hidden_size, 2)
    torch.nn.init.normal_(head.weight)
    return MultiplexedClassifier(MuxConfig(n=2, prefill_layers=1, backbone="tiny"), backbone, head)


def common_lm(**kw):
    return dict(batch_size=4, lr=3e-3, warmup_steps=2, steps=10, progress=False, seed=1) | kw


# ------------------------------------------------------------------------------------------ LM


@pytest.mark.parametrize(
    "field,value",
    [
        ("steps", 0),
        ("steps", -1),
        ("batch_size", 0),
        ("lr", float("nan")),
        ("lr", float("inf")),
        ("lr", 0.0),
        ("grad_clip", float("nan")),
        ("grad_clip", -1.0),
        ("weight_decay", -0.1),
        ("warmup_steps", -1),
        ("checkpoint_every", -5),
        ("decay_fraction", 1.5),
        ("eval_every", -1),
    ],
)
def test_lm_config_rejects_nonsense(field, value):
    with pytest.raises(DepthmuxError) as e:
        LMTrainConfig(out_dir="x", **{field: value}).validate()
    assert "\n" not in str(e.value) and repr(value) in str(e.value)


def test_lm_default_checkpoint_interval():
    assert LMTrainConfig(out_dir="x", steps=300).checkpoint_interval == 30
    assert LMTrainConfig(out_dir="x", steps=5000).checkpoint_interval == 50
    assert LMTrainConfig(out_dir="x", steps=3).checkpoint_interval == 1
    assert LMTrainConfig(out_dir="x", steps=300, checkpoint_every=0).checkpoint_interval == 0


def test_lm_refuses_existing_run_and_checkpoints_by_default(tmp_path, lm_data, tiny_llama_factory):
    tok, train, _ = lm_data
    cfg = LMTrainConfig(out_dir=str(tmp_path), **common_lm())
    train_lm(tiny_llama_factory(tok.vocab_size), train, None, cfg)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [9, 10]  # every step (10% of 10), newest 2 kept
    with pytest.raises(DepthmuxError, match="already holds a run: continue it with --resume or choose a new --out"):
        train_lm(tiny_llama_factory(tok.vocab_size), train, None, cfg)
    with RunFolder(tmp_path).lock(), pytest.raises(DepthmuxError, match="in use by another run"):
        train_lm(
            tiny_llama_factory(tok.vocab_size),
            train,
            None,
            LMTrainConfig(out_dir=str(tmp_path), resume=True, **common_lm()),
        )


def test_lm_nonfinite_loss_stops_without_saving(tmp_path, lm_data, tiny_llama_factory):
    tok, train, _ = lm_data
    model = tiny_llama_factory(tok.vocab_size)
    with torch.no_grad():
        model.model.embed_tokens.weight.fill_(float("nan"))
    with pytest.raises(DepthmuxError, match="loss is nan at step 1"):
        train_lm(model, train, None, LMTrainConfig(out_dir=str(tmp_path), **common_lm()))
    assert not list_checkpoints(tmp_path) and not (tmp_path / "model").exists()


def _log(path):
    return [{k: v for k, v in r.items() if k != "time"} for r in RunFolder(path).read_log()]


def test_lm_resume_after_torn_log_and_corrupt_newest_checkpoint(tmp_path, lm_data, tiny_llama_factory, capsys):
    tok, train, held = lm_data
    full = tiny_llama_factory(tok.vocab_size)
    train_lm(full, train, held, LMTrainConfig(out_dir=str(tmp_path / "a"), eval_every=3, **common_lm()))

    cut = tmp_path / "b"
    per_step = json.loads((tmp_path / "a" / "log.jsonl").read_text().splitlines()[0])["train_flops"]
    train_lm(
        tiny_llama_factory(tok.vocab_size),
        train,
        held,
        LMTrainConfig(
            out_dir=str(cut),
            eval_every=3,
            checkpoint_every=3,
            keep_checkpoints=3,
            max_flops=per_step * 7 - 1,
            **common_lm(),
        ),
    )
    assert [s for s, _ in list_checkpoints(cut)] == [3, 6, 7]
    # a kill left: the newest checkpoint corrupt, a torn log line, a temp folder
    (cut / "checkpoints" / "step-000007" / "trainer" / "optimizer.safetensors").write_bytes(b"\0" * 10)
    with open(cut / "log.jsonl", "a") as f:
        f.write('{"step": 8, "lo')
    (cut / "checkpoints" / ".step-000008.x.tmp").mkdir()
    resumed = tiny_llama_factory(tok.vocab_size, seed=5)
    train_lm(resumed, train, held, LMTrainConfig(out_dir=str(cut), eval_every=3, resume=True, **common_lm()))
    assert "skipping corrupt checkpoint" in capsys.readouterr().err
    for (n, p), (_, q) in zip(full.named_parameters(), resumed.named_parameters(), strict=True):
        assert torch.equal(p, q), n
    assert _log(cut) == _log(tmp_path / "a")
    assert not (cut / "checkpoints" / ".step-000008.x.tmp").exists()


def test_lm_resume_checks_the_stored_settings(tmp_path, lm_data, tiny_llama_factory):
    tok, train, _ = lm_data
    train_lm(
        tiny_llama_factory(tok.vocab_size),
        train,
        None,
        LMTrainConfig(out_dir=str(tmp_path), checkpoint_every=5, **common_lm()),
    )
    with pytest.raises(DepthmuxError, match=r"different lr \(stored 0.003, given 0.01\)"):
        train_lm(
            tiny_llama_factory(tok.vocab_size),
            train,
            None,
            LMTrainConfig(out_dir=str(tmp_path), resume=True, **common_lm(lr=0.01)),
        )


# ----------------------------------------------------------------------------------------- mux


@pytest.mark.parametrize(
    "field,value",
    [
        ("epochs", 0),
        ("epochs", -1),
        ("batch_size", 0),
        ("lr", float("nan")),
        ("lr", float("inf")),
        ("tau", 0.0),
        ("weight_decay", -1.0),
    ],
)
def test_mux_config_rejects_nonsense(field, value):
    with pytest.raises(DepthmuxError):
        MuxTrainConfig(**{field: value}).validate()


def test_mux_midepoch_resume_keeps_the_logged_history(tiny_backbone, caches, tmp_path):
    train, val = caches
    cfg = MuxTrainConfig(epochs=3, batch_size=8, lr=1e-2, save_every=4)
    full = mux_model(tiny_backbone)
    ref = train_mux(full, train, val, cfg, tmp_path / "full", progress=False)
    for stop in (3, 9, 14):  # 6 steps per epoch: mid-epoch 1, 2 and 3 (the epoch's running sums matter)
        run = tmp_path / f"cut{stop}"
        train_mux(mux_model(tiny_backbone), train, val, cfg, run, progress=False, stop_after_steps=stop)
        with open(run / "log.jsonl", "a") as f:
            f.write('{"epoch": 9')  # torn by the kill
        resumed = mux_model(tiny_backbone)
        out = train_mux(resumed, train, val, cfg, run, resume=True, progress=False)
        assert out["history"] == ref["history"]
        assert RunFolder(run).read_log() == ref["history"] == RunFolder(tmp_path / "full").read_log()
        a, b = full.trainable_state_dict(), resumed.trainable_state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_mux_refusals_and_nonfinite_guard(tiny_backbone, caches, tmp_path):
    train, val = caches
    cfg = MuxTrainConfig(epochs=1, batch_size=8)
    train_mux(mux_model(tiny_backbone), train, val, cfg, tmp_path / "run", progress=False)
    with pytest.raises(DepthmuxError, match="already holds a run"):
        train_mux(mux_model(tiny_backbone), train, val, cfg, tmp_path / "run", progress=False)
    model = mux_model(tiny_backbone)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.fill_(float("nan"))
    with pytest.raises(DepthmuxError, match="loss is nan"):
        train_mux(model, train, val, cfg, tmp_path / "nan", progress=False)
    assert not (tmp_path / "nan" / "best").exists()
