"""Training loop: WSD schedule, resume == uninterrupted, FLOPs, evaluation (SPEC 4)."""

import itertools
import json
import math

import pytest
import torch

from depthmux.data.text import pack_documents, split_documents, train_bpe_tokenizer
from depthmux.errors import DepthmuxError
from depthmux.lm import HFCausalLMAdapter, evaluate_lm, load_lm, measure_forward_flops
from depthmux.training.lm import LMTrainConfig, batch_indices, list_checkpoints, train_lm
from depthmux.training.schedules import WSD, wsd_schedule

DOCS = [f"document {i}: " + " ".join(f"w{(i * 7 + j) % 23}" for j in range(20 + i % 9)) for i in range(40)]


@pytest.fixture(scope="module")
def data():
    tok = train_bpe_tokenizer(DOCS, vocab_size=300)
    train_docs, eval_docs = split_documents(DOCS, 0.2, seed=0)
    return tok, pack_documents(train_docs, tok, 32), pack_documents(eval_docs, tok, 32)


def tiny_llama(vocab, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        attention_dropout=0.1,
    )
    return LlamaForCausalLM(cfg)


def test_wsd_shape():
    f = WSD(total_steps=100, warmup_steps=10, decay_fraction=0.2, min_ratio=0.1)
    values = [f(s) for s in range(100)]
    assert values[0] == pytest.approx(0.1)
    assert all(a < b for a, b in itertools.pairwise(values[:10]))  # linear warmup
    assert values[9] == 1.0 and all(v == 1.0 for v in values[9:80])  # stable
    assert all(a > b for a, b in itertools.pairwise(values[80:100]))  # decay
    assert values[99] == pytest.approx(0.1)
    cos = WSD(100, 0, 0.5, 0.0, "cosine")
    assert cos(74) == pytest.approx(0.5 * (1 + math.cos(math.pi * 25 / 50)))
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = wsd_schedule(opt, 10, 2, 0.5)
    lrs = []
    for _ in range(10):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[:3] == [1.0, 2.0, 2.0] and lrs[-1] == 0.0
    with pytest.raises(DepthmuxError):
        WSD(0)
    with pytest.raises(DepthmuxError):
        WSD(10, decay="step")


def test_batch_indices_cover_epoch():
    seen = torch.cat([batch_indices(s, 4, 10, seed=3) for s in range(5)])
    assert sorted(seen[:10].tolist()) == list(range(10))
    assert torch.equal(batch_indices(2, 4, 10, 3), batch_indices(2, 4, 10, 3))


def test_resume_equals_uninterrupted(tmp_path, data):
    tok, train, held = data
    common = dict(batch_size=4, lr=3e-3, warmup_steps=2, steps=10, progress=False, seed=1)
    a = tiny_llama(tok.vocab_size)
    ra = train_lm(a, train, held, LMTrainConfig(out_dir=str(tmp_path / "a"), **common), tokenizer=tok)

    b = tiny_llama(tok.vocab_size)
    cfg_b = LMTrainConfig(out_dir=str(tmp_path / "b"), checkpoint_every=5, max_flops=None, **common)
    # interrupt after step 5: run with max_flops set to the FLOPs of 5 steps
    per_step = ra.train_flops / 10
    cfg_b.max_flops = per_step * 5 - 1
    rb1 = train_lm(b, train, None, cfg_b, tokenizer=tok)
    assert rb1.step == 5
    assert [s for s, _ in list_checkpoints(tmp_path / "b")] == [5]
    c = tiny_llama(tok.vocab_size, seed=123)  # different init: everything must come from the checkpoint
    cfg_c = LMTrainConfig(out_dir=str(tmp_path / "b"), checkpoint_every=5, resume=True, **common)
    rc = train_lm(c, train, held, cfg_c, tokenizer=tok)
    assert rc.step == 10
    for (n, p), (_, q) in zip(a.named_parameters(), c.named_parameters(), strict=True):
        assert torch.equal(p, q), n
    assert rc.train_flops == pytest.approx(ra.train_flops)
    assert rc.eval["nll"] == pytest.approx(ra.eval["nll"])
    log = [json.loads(x) for x in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == list(range(1, 11))
    log_a = [json.loads(x) for x in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in log if "loss" in r] == [r["loss"] for r in log_a if "loss" in r]


def test_train_logs_and_reload(tmp_path, data):
    tok, train, held = data
    m = tiny_llama(tok.vocab_size)
    before = evaluate_lm(m, held)
    res = train_lm(
        m,
        train,
        held,
        LMTrainConfig(
            out_dir=str(tmp_path), steps=20, batch_size=4, lr=1e-2, warmup_steps=2, eval_every=10, progress=False
        ),
    )
    assert res.eval["nll"] < before["nll"]
    assert res.train_flops > 0 and res.approx_flops_6nd > 0 and res.tokens == 20 * 4 * 32
    recs = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert {"loss", "lm_loss", "lr", "train_flops", "grad_norm"} <= set(recs[0])
    assert any("eval" in r for r in recs)
    m2 = load_lm(tmp_path)
    again = evaluate_lm(m2, held)
    assert again["nll"] == pytest.approx(res.eval["nll"], rel=1e-5)
    assert again["ppl"] == pytest.approx(math.exp(again["nll"]))


def test_flops_and_params(data):
    """The adapter declares the closed form: linears 2·params per token, attention 4·pairs·d_attn per layer."""
    from depthmux.lm.hf_adapter import causal_pairs

    tok, train, _ = data
    m = tiny_llama(tok.vocab_size)
    f = measure_forward_flops(m, train, batch_size=2)
    p = HFCausalLMAdapter(m).parameter_counts()
    batch = train.batch(slice(0, 2))
    tokens = batch["input_ids"].numel()
    attn = m.config.num_hidden_layers * 4 * causal_pairs(batch["position_ids"]) * 32 / tokens
    lin = sum(x.numel() for n, x in m.named_parameters() if x.dim() == 2 and "embed" not in n)
    head = m.lm_head.weight.numel()
    assert f["flops_per_token"] == pytest.approx(2 * lin + attn)
    assert f["approx_6n_per_token"] == pytest.approx(6 * (lin - head) + 3 * attn)
    assert f["train_flops_per_token"] == pytest.approx(3 * f["flops_per_token"])
    assert p["total"] == p["embedding"] + p["non_embedding"]
    assert p["total"] == sum(x.numel() for x in m.parameters())
    assert causal_pairs(torch.tensor([[0, 1, 2, 3], [0, 1, 0, 1]])) == 10 + 3 + 3


def test_train_errors(tmp_path, data):
    tok, train, _ = data
    with pytest.raises(DepthmuxError, match="no checkpoint"):
        train_lm(
            tiny_llama(tok.vocab_size),
            train,
            None,
            LMTrainConfig(out_dir=str(tmp_path / "x"), steps=2, resume=True, progress=False),
        )
    with pytest.raises(DepthmuxError):
        train_lm(tiny_llama(tok.vocab_size), train, None, LMTrainConfig(out_dir=str(tmp_path), steps=0))
    with pytest.raises(DepthmuxError, match="model not found"):
        load_lm(tmp_path / "nope")


def test_resume_mor_expert(tmp_path, data):
    """Resume is exact for a MoR expert-choice model too (router weights, aux losses)."""
    rec = pytest.importorskip("depthmux.recursion")
    tok, train, held = data

    def make(seed):
        torch.manual_seed(seed)
        return rec.RecursiveForCausalLM(
            rec.RecursiveConfig(
                vocab_size=tok.vocab_size,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=4,
                num_attention_heads=4,
                num_key_value_heads=2,
                sharing="middle_cycle",
                num_recursions=2,
                mor_router="expert",
            )
        )

    common = dict(batch_size=4, lr=3e-3, warmup_steps=2, steps=6, progress=False)
    a = make(0)
    ra = train_lm(a, train, held, LMTrainConfig(out_dir=str(tmp_path / "a"), **common))
    b = make(0)
    train_lm(
        b,
        train,
        None,
        LMTrainConfig(out_dir=str(tmp_path / "b"), checkpoint_every=3, max_flops=ra.train_flops / 2 - 1, **common),
    )
    c = make(7)
    rc = train_lm(c, train, held, LMTrainConfig(out_dir=str(tmp_path / "b"), resume=True, **common))
    for (n, p), (_, q) in zip(a.named_parameters(), c.named_parameters(), strict=True):
        assert torch.equal(p, q), n
    recs = [json.loads(x) for x in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert "router_bce" in recs[0]["aux"] and "causal_agreement" in recs[0]["router_stats"]
    topk = evaluate_lm(a, held, routing="topk")
    assert len(topk["router_stats"]["causal_agreement"]) == 2
    assert rc.eval["nll"] == pytest.approx(ra.eval["nll"])
