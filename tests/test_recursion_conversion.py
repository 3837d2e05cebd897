"""LLaMA -> recursive conversion (SPEC 3) and one-line errors for bad input."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from depthmux.errors import DepthmuxError
from depthmux.recursion import (
    RecursiveConfig,
    RecursiveForCausalLM,
    convert_llama_to_recursive,
    load_recursive_model,
    recursive_config_from_llama,
    recursive_from_llama_state_dict,
)

VOCAB = 101


@pytest.fixture(scope="module")
def llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
        max_position_embeddings=128,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # distinct norm gains per layer, so folding them matters
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(5))


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def test_vanilla_matches_llama(llama, x):
    cfg = recursive_config_from_llama(llama.config)
    ours = recursive_from_llama_state_dict(llama.state_dict(), cfg).eval()
    mask = torch.ones_like(x)
    mask[1, :3] = 0
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        assert _max_diff(ours(x).logits, llama(x).logits) < 1e-4
        ref = llama(x, attention_mask=mask, position_ids=pos).logits
        got = ours(x, attention_mask=mask).logits
    assert _max_diff(got[1, 3:], ref[1, 3:]) < 1e-4  # left padding: real tokens agree


@pytest.mark.parametrize(
    "sharing,n", [("cycle", 2), ("cycle", 4), ("sequence", 2), ("middle_cycle", 2), ("middle_sequence", 2)]
)
@pytest.mark.parametrize("init", ["stepwise", "average", "lower"])
def test_full_rank_relaxation_reproduces_original(llama, x, sharing, n, init):
    model = convert_llama_to_recursive(llama, n, sharing=sharing, init=init, relaxation_rank=64)
    with torch.no_grad():
        assert _max_diff(model(x).logits, llama(x).logits) < 1e-3


def test_low_rank_is_approximate_and_rank0_is_plain_sharing(llama, x):
    with torch.no_grad():
        ref = llama(x).logits
        d0 = _max_diff(convert_llama_to_recursive(llama, 2, relaxation_rank=0)(x).logits, ref)
        d8 = _max_diff(convert_llama_to_recursive(llama, 2, relaxation_rank=8)(x).logits, ref)
        d64 = _max_diff(convert_llama_to_recursive(llama, 2, relaxation_rank=64)(x).logits, ref)
    assert d64 < 1e-3 < d8 and d64 < d0


def _folded(llama, i, name):
    sd = llama.state_dict()
    w = sd[f"model.layers.{i}.self_attn.{name}.weight"]
    return w * sd[f"model.layers.{i}.input_layernorm.weight"][None, :]


def test_init_methods_pick_the_right_layers(llama):
    # cycle, L = 4, N_r = 2, K = 2: positions (0,1,2,3) -> unique (0,1,0,1)
    step = convert_llama_to_recursive(llama, 2, sharing="cycle", init="stepwise")
    avg = convert_llama_to_recursive(llama, 2, sharing="cycle", init="average")
    low = convert_llama_to_recursive(llama, 2, sharing="cycle", init="lower")
    q = lambda m, u: m.model.layers[u].self_attn.q_proj.weight  # noqa: E731
    torch.testing.assert_close(q(step, 0), _folded(llama, 0, "q_proj"))  # first and last kept
    torch.testing.assert_close(q(step, 1), _folded(llama, 3, "q_proj"))
    torch.testing.assert_close(q(avg, 0), (_folded(llama, 0, "q_proj") + _folded(llama, 2, "q_proj")) / 2)
    torch.testing.assert_close(q(low, 1), _folded(llama, 1, "q_proj"))
    # middle_cycle copies first and last layers as they are
    mid = convert_llama_to_recursive(llama, 2, sharing="middle_cycle")
    torch.testing.assert_close(
        mid.model.layers[0].self_attn.q_proj.weight, llama.model.layers[0].self_attn.q_proj.weight
    )
    torch.testing.assert_close(mid.model.layers[-1].mlp.down_proj.weight, llama.model.layers[3].mlp.down_proj.weight)


def test_convert_from_folder_with_mor(llama, x, tmp_path):
    llama.save_pretrained(tmp_path / "llama")
    model = convert_llama_to_recursive(tmp_path / "llama", 2, sharing="middle_cycle", mor_router="expert")
    assert isinstance(model, RecursiveForCausalLM) and model.config.mor_router == "expert"
    out = model(x, labels=x)
    assert torch.isfinite(out.loss)


# ------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    "kw,needle",
    [
        (dict(sharing="cycle", num_hidden_layers=6, num_recursions=4), "does not divide"),
        (dict(sharing="middle_cycle", num_hidden_layers=6, num_recursions=3), "does not divide"),
        (dict(sharing="sequence", num_hidden_layers=4, num_recursions=0), "num_recursions"),
        (dict(sharing="cycle", num_hidden_layers=4, num_recursions=-1), "num_recursions"),
        (dict(sharing="zigzag", num_hidden_layers=4, num_recursions=2), "sharing"),
        (dict(sharing="none", num_hidden_layers=4, num_recursions=2), "num_recursions=1"),
        (dict(sharing="none", num_hidden_layers=4, relaxation_rank=2), "relaxation_rank"),
        (
            dict(
                sharing="middle_cycle",
                num_hidden_layers=8,
                num_recursions=3,
                mor_router="expert",
                mor_capacity=[1.0, 0.0, 0.3],
            ),
            "(0, 1]",
        ),
        (
            dict(
                sharing="middle_cycle",
                num_hidden_layers=8,
                num_recursions=3,
                mor_router="expert",
                mor_capacity=[1.0, 1.5, 0.3],
            ),
            "(0, 1]",
        ),
        (
            dict(
                sharing="middle_cycle",
                num_hidden_layers=8,
                num_recursions=3,
                mor_router="expert",
                mor_capacity=[1.0, 0.5],
            ),
            "entries",
        ),
        (dict(sharing="sequence", num_hidden_layers=4, num_recursions=2, mor_router="expert"), "mor_router"),
        (dict(sharing="cycle", num_hidden_layers=4, num_recursions=2, mor_router="topk"), "mor_router"),
        (dict(sharing="cycle", num_hidden_layers=4, num_recursions=2, mor_kv="share_all"), "mor_kv"),
    ],
)
def test_config_errors_are_one_line(kw, needle):
    with pytest.raises(DepthmuxError) as e:
        RecursiveConfig(vocab_size=11, hidden_size=16, intermediate_size=32, num_attention_heads=2, **kw)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg


def test_conversion_errors(llama, tmp_path):
    with pytest.raises(DepthmuxError, match="does not divide"):
        convert_llama_to_recursive(llama, 3, sharing="cycle")
    with pytest.raises(DepthmuxError, match="init"):
        convert_llama_to_recursive(llama, 2, init="median")
    with pytest.raises(DepthmuxError, match=r"config\.json"):
        convert_llama_to_recursive(tmp_path, 2)


def test_corrupt_checkpoint_folder(tmp_path):
    model = RecursiveForCausalLM(
        RecursiveConfig(vocab_size=11, hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=2)
    )
    good = tmp_path / "good"
    model.save_pretrained(good)
    assert isinstance(load_recursive_model(good), RecursiveForCausalLM)
    for f in good.glob("*.safetensors"):
        f.write_bytes(b"this is not a safetensors file" * 10)
    with pytest.raises(DepthmuxError) as e:
        load_recursive_model(good)
    assert "\n" not in str(e.value) and "model.safetensors is not a safetensors file" in str(e.value)
    with pytest.raises(DepthmuxError, match="no model folder"):
        load_recursive_model(tmp_path / "missing")
    (tmp_path / "badjson").mkdir()
    (tmp_path / "badjson" / "config.json").write_text("{oops")
    with pytest.raises(DepthmuxError, match="not valid JSON"):
        load_recursive_model(tmp_path / "badjson")


@pytest.mark.slow
def test_smollm2_conversion_runs():
    from depthmux import assets

    cached = assets.cache_dir() / "smollm2-135m-instruct"
    if (cached / "config.json").is_file():
        llama = LlamaForCausalLM.from_pretrained(cached, dtype=torch.float32).eval()
    else:  # read the GGUF directly (one dequantisation, ~20 s)
        llama = LlamaForCausalLM.from_pretrained(
            assets.package_dir(assets.SMOLLM2_PACKAGE), gguf_file=assets.SMOLLM2_GGUF, dtype=torch.float32
        ).eval()
    x = torch.randint(0, llama.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(0))
    vanilla = convert_llama_to_recursive(llama, 1, sharing="none")
    rec = convert_llama_to_recursive(llama, 2, sharing="middle_cycle", init="stepwise", relaxation_rank=4)
    with torch.no_grad():
        ref = llama(x).logits
        assert (vanilla(x).logits - ref).abs().max().item() < 1e-3
        assert torch.isfinite(rec(x).logits).all()
    assert rec.config.block_size == 14 and rec.config.num_unique_layers == 16
