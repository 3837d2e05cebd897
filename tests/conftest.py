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
    cfg = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=4, intermediate_size=2 * hidden, max_position_embeddings=64)
    return HFEncoderBackbone(BertModel(cfg, add_pooling_layer=False), tokenizer, readout=readout, name="tiny")


@pytest.fixture
def tiny_backbone(tokenizer):
    return make_tiny_backbone(tokenizer)


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(1)
    yield
