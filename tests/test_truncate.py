"""The truncated-LLaMA baseline (issue 19 point 4)."""

from __future__ import annotations

import json

import pytest
import torch

from depthmux.data.text import load_corpus, train_bpe_tokenizer
from depthmux.errors import DepthmuxError
from depthmux.lm import HFCausalLMAdapter, load_lm
from depthmux.lm.truncation import forward_flops_per_token, kept_layers, layers_for_flops, truncate_llama
from depthmux.recipes.truncate import run_lm_truncate


def test_kept_layers():
    assert kept_layers(30, 8) == [0, 1, 2, 3, 4, 5, 6, 29]
    assert kept_layers(30, 8, "first") == list(range(8))
    assert kept_layers(4, 4) == [0, 1, 2, 3] and kept_layers(4, 1) == [0]
    with pytest.raises(DepthmuxError, match="--layers"):
        kept_layers(4, 5)
    with pytest.raises(DepthmuxError, match="--keep"):
        kept_layers(4, 2, "middle")


def test_truncated_weights_and_flops(tiny_llama_factory):
    m = tiny_llama_factory(vocab_size=64, num_hidden_layers=5).eval()
    t = truncate_llama(m, 3)
    assert t.config.num_hidden_layers == 3 and len(t.model.layers) == 3
    for new, old in enumerate([0, 1, 4]):
        for (n, p), (_, q) in zip(
            t.model.layers[new].named_parameters(), m.model.layers[old].named_parameters(), strict=True
        ):
            assert torch.equal(p, q), n
    assert torch.equal(t.lm_head.weight, m.lm_head.weight)
    ids = torch.randint(0, 64, (2, 12))
    pos = torch.arange(12).expand(2, 12)
    full = truncate_llama(m, 5)  # keeping every layer changes nothing
    assert torch.allclose(full(input_ids=ids).logits, m(input_ids=ids).logits, atol=1e-6)
    assert not torch.allclose(t(input_ids=ids).logits, m(input_ids=ids).logits, atol=1e-3)
    f = {k: forward_flops_per_token(HFCausalLMAdapter(truncate_llama(m, k)), ids, pos) for k in (1, 2, 3, 5)}
    assert f[3] - f[2] == pytest.approx(f[2] - f[1]) and f[5] > f[3]
    assert layers_for_flops(f[3], {1: f[1], 2: f[2]}) == 3
    assert layers_for_flops(f[3] + 0.4 * (f[2] - f[1]), {1: f[1], 2: f[2]}) == 3


def test_run_lm_truncate_matches_another_models_flops(tmp_path, tiny_llama_factory):
    tok = train_bpe_tokenizer(load_corpus("kjv")[:30], vocab_size=300)
    src = tiny_llama_factory(vocab_size=len(tok), num_hidden_layers=6)
    src.save_pretrained(tmp_path / "src")
    tok.save_pretrained(tmp_path / "src")
    tiny_llama_factory(vocab_size=len(tok), num_hidden_layers=2).save_pretrained(tmp_path / "target")
    corpus = tmp_path / "text.txt"
    corpus.write_text("\n\n".join(load_corpus("kjv")[:40]), encoding="utf-8")
    rec = run_lm_truncate(
        tmp_path / "out", str(tmp_path / "src"), match_flops=str(tmp_path / "target"), corpus=str(corpus), block_size=32
    )
    assert rec["layers"] == 2 and rec["kept_layers"] == [0, 5]
    assert rec["flops_per_token"] == pytest.approx(rec["target_flops_per_token"])
    loaded = load_lm(tmp_path / "out")
    assert loaded.config.num_hidden_layers == 2
    assert json.loads((tmp_path / "out" / "truncation.json").read_text())["layers"] == 2
    with pytest.raises(DepthmuxError, match="exactly one"):
        run_lm_truncate(tmp_path / "o2", str(tmp_path / "src"))
    with pytest.raises(DepthmuxError, match="not an empty folder"):
        run_lm_truncate(tmp_path / "out", str(tmp_path / "src"), layers=2)


def test_cli_truncate_needs_one_of_layers_and_match_flops(tmp_path, capsys):
    from depthmux.cli import main

    with pytest.raises(SystemExit) as e:
        main(["lm", "truncate", "--out", str(tmp_path / "t")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and "exactly one" in err
