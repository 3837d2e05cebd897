"""Text corpora: loading, held-out split, packing with document-local attention (SPEC 6)."""

import json

import pytest
import torch

from conftest import build_tiny_llama, build_tiny_recursive
from depthmux.data.text import (
    IGNORE_INDEX,
    clean_play_markdown,
    document_ids,
    load_corpus,
    pack_documents,
    split_documents,
    train_bpe_tokenizer,
)
from depthmux.errors import DepthmuxError

DOCS = ["the cat sat on the mat", "a dog ran far away from home today", "x", "birds sing at dawn " * 5]


@pytest.fixture(scope="module")
def tok():
    return train_bpe_tokenizer(DOCS * 3, vocab_size=280)


def test_pack_layout(tok):
    b = pack_documents(DOCS, tok, block_size=8, seed=None)
    ids = [tok(d, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for d in DOCS]
    stream = [t for d in ids for t in d]
    flat = b.input_ids.reshape(-1)
    assert flat[: len(stream)].tolist() == stream
    assert (flat[len(stream) :] == tok.eos_token_id).all()
    # positions restart at 0 at every document start and every block start
    pos = b.position_ids.reshape(-1)[: len(stream)].tolist()
    starts = {0}
    for d in ids[:-1]:
        starts.add(max(starts) + len(d))
    assert {i for i, p in enumerate(pos) if p == 0} == starts | set(range(0, len(stream), 8))
    assert (b.position_ids[:, 0] == 0).all()
    # labels: ids except -100 at positions 0 and on padding
    assert torch.equal(b.labels == IGNORE_INDEX, (b.position_ids == 0) | (b.labels == IGNORE_INDEX))
    assert (b.labels.reshape(-1)[len(stream) :] == IGNORE_INDEX).all()
    keep = b.labels != IGNORE_INDEX
    assert torch.equal(b.labels[keep], b.input_ids[keep])
    assert b.num_documents == 4 and b.num_tokens == len(b) * 8


def test_pack_is_seeded(tok):
    a = pack_documents(DOCS, tok, 8, seed=1)
    b = pack_documents(DOCS, tok, 8, seed=1)
    assert torch.equal(a.input_ids, b.input_ids)
    assert document_ids(torch.tensor([[0, 1, 0, 1, 2, 0]])).tolist() == [[0, 0, 1, 1, 1, 2]]


@pytest.mark.parametrize(
    "build", [build_tiny_llama, build_tiny_recursive], ids=["transformers-llama", "depthmux-recursive"]
)
def test_packed_attention_does_not_cross_documents(tok, build):
    """Restarting position_ids isolate documents: transformers' Llama derives a block-diagonal
    causal mask from them when attention_mask is None and no cache is used (our loop passes
    use_cache=False); depthmux.recursion derives segments from position_ids itself."""
    torch.manual_seed(0)
    m = build(vocab_size=tok.vocab_size).eval()
    b = pack_documents(DOCS[:2], tok, block_size=64, seed=None)
    d1 = len(tok(DOCS[0], add_special_tokens=False)["input_ids"]) + 1
    d2 = tok(DOCS[1], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    with torch.no_grad():
        packed = m(input_ids=b.input_ids, position_ids=b.position_ids, use_cache=False).logits
        alone = m(input_ids=torch.tensor([d2]), use_cache=False).logits
    assert torch.allclose(packed[0, d1 : d1 + len(d2)], alone[0], atol=1e-5)


def test_split_disjoint_deterministic():
    docs = [f"doc {i}" for i in range(50)]
    tr, ev = split_documents(docs, 0.2, seed=3)
    assert len(ev) == 10 and len(tr) == 40 and not set(tr) & set(ev) and set(tr) | set(ev) == set(docs)
    assert (tr, ev) == split_documents(docs, 0.2, seed=3)
    assert ev != split_documents(docs, 0.2, seed=4)[1]
    tr2, ev2 = split_documents(["a", "b"], 0.01, seed=0)
    assert len(tr2) == 1 and len(ev2) == 1


def test_local_files(tmp_path):
    (tmp_path / "a.txt").write_text("para one\nline two\n\n\npara two\n")
    assert load_corpus(tmp_path / "a.txt") == ["para one\nline two", "para two"]
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "hello"}) + "\n\n" + json.dumps({"text": "bye"}) + "\n")
    assert load_corpus(tmp_path / "b.jsonl") == ["hello", "bye"]
    folder = tmp_path / "dir"
    folder.mkdir()
    (folder / "x.txt").write_text("one\n\ntwo")
    (folder / "y.txt").write_text("three")
    assert load_corpus(folder) == ["one\n\ntwo", "three"]


def test_errors(tmp_path):
    with pytest.raises(DepthmuxError, match="not found"):
        load_corpus(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("\n\n  \n")
    with pytest.raises(DepthmuxError, match="empty"):
        load_corpus(tmp_path / "empty.txt")
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(DepthmuxError, match="line 1"):
        load_corpus(tmp_path / "bad.jsonl")
    (tmp_path / "nofield.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(DepthmuxError, match="text"):
        load_corpus(tmp_path / "nofield.jsonl")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(DepthmuxError, match="UTF-8"):
        load_corpus(tmp_path / "bin.txt")
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(DepthmuxError, match="unsupported"):
        load_corpus(tmp_path / "x.csv")
    with pytest.raises(DepthmuxError, match="empty"):
        split_documents([], 0.1)


def test_markdown_cleaning():
    lines = clean_play_markdown(
        "# Title\n\n### SCENE I. A room.\n\n_Enter \\[Aside]_  \n**HAMLET**  \nTo be,  \nor not\n"
    )
    assert lines[0] == (1, "Title")
    assert (3, "SCENE I. A room.") in lines
    assert [t for _, t in lines if t][2:] == ["Enter [Aside]", "HAMLET:", "To be,", "or not"]


@pytest.mark.slow
@pytest.mark.ci
def test_packaged_corpora():
    sh = load_corpus("shakespeare")
    assert len(sh) > 700
    assert not any("**" in d or "\\[" in d for d in sh)
    assert len(load_corpus("shakespeare:play")) == 38
    kjv = load_corpus("kjv")
    assert len(kjv) == 1189 and kjv[0].startswith("Genesis 1\nIn the beginning")
    assert len(load_corpus("kjv:book")) == 66
