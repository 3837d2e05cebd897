"""Knowledge distillation in the LM loop, and mixed corpora (issue 19 point 1)."""

from __future__ import annotations

import json

import pytest
import torch

from depthmux.data.text import corpus_parts, load_corpus, pack_documents, split_corpus, split_documents
from depthmux.data.text import train_bpe_tokenizer as bpe
from depthmux.errors import DepthmuxError
from depthmux.training.distill import kd_loss
from depthmux.training.lm import LMTrainConfig, train_lm

DOCS = [f"document {i}: " + " ".join(f"w{(i * 7 + j) % 23}" for j in range(20 + i % 9)) for i in range(40)]


@pytest.fixture(scope="module")
def data():
    tok = bpe(DOCS, vocab_size=300)
    train_docs, eval_docs = split_documents(DOCS, 0.2, seed=0)
    return tok, pack_documents(train_docs, tok, 32), pack_documents(eval_docs, tok, 32)


def test_kd_loss_zero_for_identical_logits_and_masked():
    torch.manual_seed(0)
    s, t = torch.randn(2, 6, 11), torch.randn(2, 6, 11)
    labels = torch.ones(2, 6, dtype=torch.long)
    assert float(kd_loss(s, s, labels)) == 0.0
    assert float(kd_loss(s, t, labels)) > 0
    # positions without a next-token target do not count
    labels[:, 1:] = -100
    assert float(kd_loss(s, t, labels)) == 0.0
    labels[0, 3] = 5  # only logit 2 of row 0 counts
    one = kd_loss(s[:1, 2:4], t[:1, 2:4], torch.ones(1, 2, dtype=torch.long))
    assert float(kd_loss(s, t, labels)) == pytest.approx(float(one))
    assert float(kd_loss(s, t, torch.ones(2, 6, dtype=torch.long), temperature=2.0)) > 0
    with pytest.raises(DepthmuxError, match="vocabulary"):
        kd_loss(s, t[..., :10], labels)


def _tiny(tiny_llama_factory, vocab, seed):
    return tiny_llama_factory(vocab_size=vocab, seed=seed)


def test_kd_is_zero_when_student_is_teacher(tmp_path, data, tiny_llama_factory):
    tok, train, _ = data
    teacher = _tiny(tiny_llama_factory, len(tok), 0)
    teacher.save_pretrained(tmp_path / "teacher")
    student = _tiny(tiny_llama_factory, len(tok), 0)
    cfg = LMTrainConfig(out_dir=str(tmp_path / "run"), steps=1, batch_size=4, teacher=str(tmp_path / "teacher"),
                        kd_weight=1.0, progress=False)  # fmt: skip
    train_lm(student, train, None, cfg, tokenizer=tok)
    (rec,) = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert rec["kd_loss"] == pytest.approx(0.0, abs=1e-6) and rec["teacher_flops"] > 0


def test_kd_decreases_and_resume_is_exact(tmp_path, data, tiny_llama_factory):
    tok, train, held = data
    teacher = _tiny(tiny_llama_factory, len(tok), 7)
    with torch.no_grad():  # a confident teacher: far from the student's near-uniform start
        teacher.lm_head.weight.mul_(30.0)
    teacher.save_pretrained(tmp_path / "teacher")
    common = dict(batch_size=4, lr=1e-2, warmup_steps=2, steps=24, progress=False, teacher=str(tmp_path / "teacher"),
                  kd_weight=5.0, kd_temperature=2.0, eval_every=8)  # fmt: skip
    a = _tiny(tiny_llama_factory, len(tok), 0)
    ra = train_lm(a, train, held, LMTrainConfig(out_dir=str(tmp_path / "a"), **common), tokenizer=tok)
    log = [json.loads(x) for x in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    kd = [r["kd_loss"] for r in log if "kd_loss" in r]
    assert len(kd) == 24 and sum(kd[-4:]) < 0.5 * sum(kd[:4])
    assert [r["step"] for r in log if "eval" in r] == [8, 16, 24]  # held-out NLL as it goes
    # interrupted after 12 steps (by a FLOP budget) and resumed: the same weights and log
    b = _tiny(tiny_llama_factory, len(tok), 0)
    cfg_b = LMTrainConfig(out_dir=str(tmp_path / "b"), checkpoint_every=12, max_flops=ra.train_flops / 2 - 1, **common)
    assert train_lm(b, train, None, cfg_b, tokenizer=tok).step == 12
    c = _tiny(tiny_llama_factory, len(tok), 99)
    cfg_c = LMTrainConfig(out_dir=str(tmp_path / "b"), checkpoint_every=12, resume=True, **common)
    train_lm(c, train, held, cfg_c, tokenizer=tok)
    for (n, p), (_, q) in zip(a.named_parameters(), c.named_parameters(), strict=True):
        assert torch.equal(p, q), n
    log_b = [json.loads(x) for x in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["kd_loss"] for r in log_b if "kd_loss" in r] == kd
    # a resume with other distillation settings is refused
    cfg_d = LMTrainConfig(out_dir=str(tmp_path / "b"), resume=True, **{**common, "kd_weight": 0.5})
    with pytest.raises(DepthmuxError, match="kd_weight"):
        train_lm(c, train, held, cfg_d, tokenizer=tok)


def test_kd_config_errors(tmp_path, data, tiny_llama_factory):
    tok, train, _ = data
    with pytest.raises(DepthmuxError, match="both --teacher"):
        LMTrainConfig(out_dir="x", kd_weight=1.0).validate()
    with pytest.raises(DepthmuxError, match="kd-temperature"):
        LMTrainConfig(out_dir="x", teacher="smollm2", kd_weight=1.0, kd_temperature=0.0).validate()
    _tiny(tiny_llama_factory, len(tok) + 5, 0).save_pretrained(tmp_path / "teacher")
    cfg = LMTrainConfig(out_dir=str(tmp_path / "r"), steps=1, teacher=str(tmp_path / "teacher"), kd_weight=1.0,
                        progress=False)  # fmt: skip
    with pytest.raises(DepthmuxError, match="one vocabulary"):
        train_lm(_tiny(tiny_llama_factory, len(tok), 0), train, None, cfg, tokenizer=tok)


def test_mixed_corpus_splits_each_part_alone(tmp_path):
    local = tmp_path / "notes.txt"
    local.write_text("\n\n".join(f"note {i} about things" for i in range(30)), encoding="utf-8")
    spec = f"kjv+{local}"
    assert corpus_parts(spec) == ["kjv", str(local)]
    train, held = split_corpus(spec, 0.1, 0)
    k_train, k_held = split_documents(load_corpus("kjv"), 0.1, 0)
    l_train, l_held = split_documents(load_corpus(local), 0.1, 0)
    assert train == k_train + l_train and held == k_held + l_held
    assert load_corpus(spec) == load_corpus("kjv") + load_corpus(local)
    with pytest.raises(DepthmuxError, match="empty part"):
        corpus_parts("kjv++shakespeare")
