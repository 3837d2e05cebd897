"""Shared fixtures: tiny random-initialised backbones (fast) and paths to the real assets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel

from depthmux.assets import minilm_path
from depthmux.backbones import HFEncoderBackbone

REPO = Path(__file__).resolve().parents[1]


def glue_dir() -> Path | None:
    """``$DEPTHMUX_GLUE_DIR`` or ``../shared/data/glue`` beside the checkout (as in CI)."""
    for cand in (os.environ.get("DEPTHMUX_GLUE_DIR"), REPO.parent / "shared" / "data" / "glue"):
        if cand and Path(cand).is_dir():
            return Path(cand)
    return None


@pytest.fixture(scope="session")
def glue() -> Path:
    path = glue_dir()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("GLUE data not found in CI: expected ../shared/data/glue or $DEPTHMUX_GLUE_DIR")
        pytest.skip("GLUE data not found (set DEPTHMUX_GLUE_DIR)")
    return path


@pytest.fixture(scope="session")
def tokenizer():
    return AutoTokenizer.from_pretrained(minilm_path())


def make_tiny_backbone(tokenizer, hidden: int = 48, layers: int = 3, readout: str = "mean", seed: int = 0):
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=2 * hidden,
        max_position_embeddings=64,
    )
    return HFEncoderBackbone(BertModel(cfg, add_pooling_layer=False), tokenizer, readout=readout, name="tiny")


@pytest.fixture
def tiny_backbone(tokenizer):
    return make_tiny_backbone(tokenizer)


def build_tiny_llama(vocab_size: int = 64, seed: int = 0, **overrides):
    """A random-initialised transformers ``LlamaForCausalLM`` (2 layers, d = 32, GQA 4/2 heads)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    kw = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    kw.update(overrides)
    return LlamaForCausalLM(LlamaConfig(**kw))


def build_tiny_recursive(vocab_size: int = 61, seed: int = 0, **overrides):
    """A random-initialised ``depthmux.recursion.RecursiveForCausalLM`` (d = 32, GQA 4/2 heads,
    4 layers, middle-cycle with 2 recursions unless overridden)."""
    from depthmux.recursion import RecursiveConfig, RecursiveForCausalLM

    torch.manual_seed(seed)
    kw = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        sharing="middle_cycle",
        num_recursions=2,
    )
    kw.update(overrides)
    return RecursiveForCausalLM(RecursiveConfig(**kw))


@pytest.fixture
def tiny_llama_factory():
    """``factory(vocab_size=64, seed=0, **LlamaConfig overrides) -> LlamaForCausalLM``."""
    return build_tiny_llama


@pytest.fixture
def tiny_recursive_factory():
    """``factory(vocab_size=61, seed=0, **RecursiveConfig overrides) -> RecursiveForCausalLM``."""
    return build_tiny_recursive


@pytest.fixture
def tiny_backbone_factory(tokenizer):
    """``factory(hidden=48, layers=3, readout="mean", seed=0) -> HFEncoderBackbone`` (tiny BERT)."""
    return lambda **kw: make_tiny_backbone(tokenizer, **kw)


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(1)
    yield


@pytest.fixture
def corpus(tmp_path):
    """A small text file (30 paragraphs of a 17-word vocabulary) for the LM / early-exit CLI tests; files
    that need another text define their own ``corpus``."""
    path = tmp_path / "corpus.txt"
    paras = [f"paragraph {i}: " + " ".join(f"word{(i * 5 + j) % 17}" for j in range(25)) for i in range(30)]
    path.write_text("\n\n".join(paras))
    return path
