"""The shallow-deep early-exit model (SPEC 2): config checks, exact LLaMA conversion, the FREE loss,
save/load through the one loader, the causal-LM protocol (declared FLOPs, parameter counts)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from depthmux.early_exit import (
    EarlyExitConfig,
    EarlyExitForCausalLM,
    from_llama,
    load_early_exit_model,
    require_early_exit,
    top2_margin,
)
from depthmux.errors import DepthmuxError
from depthmux.lm import CausalLM, load_lm
from depthmux.recursion import RecursiveConfig, RecursiveForCausalLM, convert_llama_to_recursive
from depthmux.utils.flops import FlopCounter, linear_flops


def tiny_config(**kw) -> EarlyExitConfig:
    base = dict(
        exit_layer=2,
        vocab_size=61,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    base.update(kw)
    return EarlyExitConfig(**base)


def tiny_model(seed: int = 0, **kw) -> EarlyExitForCausalLM:
    torch.manual_seed(seed)
    return EarlyExitForCausalLM(tiny_config(**kw))


@pytest.mark.parametrize("exit_layer", [0, 4, -1, 2.0, True, None, "2"])
def test_exit_layer_outside_1_to_L_minus_1_is_one_line(exit_layer):
    with pytest.raises(DepthmuxError, match=r"exit layer L_s must be an integer in 1\.\.3") as e:
        tiny_config(exit_layer=exit_layer)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(("key", "value"), [("sharing", "cycle"), ("num_recursions", 2), ("mor_router", "expert")])
def test_not_a_plain_llama_is_refused(key, value):
    with pytest.raises(DepthmuxError, match=f"plain LLaMA decoder: {key} must be"):
        tiny_config(**{key: value})


@pytest.mark.parametrize("alpha", [-0.1, float("nan"), float("inf")])
def test_bad_alpha_is_refused(alpha):
    with pytest.raises(DepthmuxError, match="exit_mse_weight"):
        tiny_config(exit_mse_weight=alpha)


def test_from_llama_is_exact_and_the_shallow_exit_reads_layer_Ls(tiny_llama_factory):
    llama = tiny_llama_factory(num_hidden_layers=4).eval()
    model = from_llama(llama, exit_layer=1)
    assert model.config.exit_layer == 1 and model.config.num_hidden_layers == 4
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = llama(ids, output_hidden_states=True)
        out = model(ids, return_shallow=True, use_cache=False)
        shallow_ref = llama.lm_head(llama.model.norm(ref.hidden_states[1]))
    assert (out.logits - ref.logits).abs().max() < 1e-4
    assert (out.shallow_logits - shallow_ref).abs().max() < 1e-4
    assert model.parameter_counts() == convert_llama_to_recursive(llama, 1, "none").parameter_counts()


def test_from_llama_checks_the_exit_layer_first(tiny_llama_factory, tmp_path):
    with pytest.raises(DepthmuxError, match=r"in 1\.\.1 \(the model has 2 layers\), got 2"):
        from_llama(tiny_llama_factory(), exit_layer=2)
    with pytest.raises(DepthmuxError, match=r"no model folder at"):
        from_llama(tmp_path / "missing", exit_layer=1)


def test_free_loss_is_the_spec_formula():
    model = tiny_model(exit_layer=1, exit_mse_weight=0.5)
    ids = torch.randint(0, 61, (3, 10), generator=torch.Generator().manual_seed(2))
    labels = ids.clone()
    labels[:, 4] = -100
    out = model(ids, labels=labels, use_cache=False)
    tgt = labels[:, 1:].flatten()
    ce_s = F.cross_entropy(out.shallow_logits[:, :-1].flatten(0, 1), tgt, ignore_index=-100)
    ce_d = F.cross_entropy(out.logits[:, :-1].flatten(0, 1), tgt, ignore_index=-100)
    assert torch.allclose(out.aux_losses["ce_shallow"], ce_s) and torch.allclose(out.aux_losses["ce_deep"], ce_d)
    assert torch.allclose(out.lm_loss, ce_d)
    expected = (1 * ce_s + 4 * ce_d) / 5 + 0.5 * out.aux_losses["mse"]
    assert torch.allclose(out.loss, expected)
    assert set(out.router_stats) == {"exit_agreement", "exit_confidence"}
    assert 0.0 <= float(out.router_stats["exit_agreement"]) <= 1.0


def test_mse_uses_a_detached_deep_state():
    """The MSE trains the shallow layers only (h_deep is a fixed target): no gradient reaches layers >= L_s."""
    model = tiny_model(exit_layer=2)
    ids = torch.randint(0, 61, (2, 8), generator=torch.Generator().manual_seed(3))
    model(ids, labels=ids, use_cache=False).aux_losses["mse"].backward()
    shallow = [p.grad for p in model.model.layers[0].parameters()]
    deep = [p.grad for layer in model.model.layers[2:] for p in layer.parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in shallow)
    assert all(g is None or g.abs().sum() == 0 for g in deep)


def test_save_load_round_trip_through_auto_classes_and_the_one_loader(tmp_path):
    model = tiny_model(exit_layer=3).eval()
    model.save_pretrained(tmp_path)
    ids = torch.randint(0, 61, (2, 9), generator=torch.Generator().manual_seed(4))
    for loaded in (AutoModelForCausalLM.from_pretrained(tmp_path), load_lm(tmp_path), load_early_exit_model(tmp_path)):
        assert type(loaded) is EarlyExitForCausalLM and loaded.config.exit_layer == 3
        with torch.no_grad():
            assert torch.equal(loaded(ids, use_cache=False).logits, model(ids, use_cache=False).logits)


def test_a_folder_without_an_exit_head_is_one_line(tmp_path, tiny_recursive_factory):
    tiny_recursive_factory().save_pretrained(tmp_path)
    with pytest.raises(DepthmuxError, match="model without an early-exit head") as e:
        load_early_exit_model(tmp_path)
    assert "\n" not in str(e.value)
    with pytest.raises(DepthmuxError, match="needs a model with a shallow exit"):
        require_early_exit(load_lm(tmp_path))


def test_protocol_flops_and_greedy_generate():
    model = tiny_model(exit_layer=2)
    assert isinstance(model, CausalLM)
    ee_only = ("exit_layer", "exit_mse_weight", "model_type")
    fields = {k: v for k, v in model.config.to_dict().items() if k not in ee_only}
    vanilla = RecursiveForCausalLM(RecursiveConfig(**fields))
    vanilla.load_state_dict(model.state_dict())
    ids = torch.randint(0, 61, (2, 8), generator=torch.Generator().manual_seed(5))
    pos = torch.arange(8).expand(2, 8)
    with FlopCounter() as ee, torch.no_grad():
        model(ids, position_ids=pos, labels=ids, use_cache=False)
    with FlopCounter() as ref, torch.no_grad():
        vanilla(ids, position_ids=pos, labels=ids, use_cache=False)
    assert ee.flops == pytest.approx(ref.flops + linear_flops(16, 32, 61))  # + the shallow exit's LM head
    assert ee.non_embedding_macs == pytest.approx(ref.non_embedding_macs)
    model.eval()
    out = model.generate(ids[:, :3], max_new_tokens=5, do_sample=False)
    with torch.no_grad():  # greedy by full recompute
        seq = ids[:, :3]
        for _ in range(5):
            seq = torch.cat([seq, model(seq, use_cache=False).logits[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(out, seq)


def test_top2_margin():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.4, 0.4, 0.2]]))
    assert torch.allclose(top2_margin(logits), torch.tensor([0.5, 0.0]), atol=1e-6)
