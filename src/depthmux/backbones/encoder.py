"""Hugging Face encoders (the BERT family: bert, roberta, xlm-roberta; see
:data:`depthmux.backbones.registry.BACKBONE_FAMILIES`) as a :class:`FrozenBackbone`, run layer
range by layer range. The default is the packaged all-MiniLM-L6-v2 (a BERT, mean pooling)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer
from transformers.masking_utils import create_bidirectional_mask
from transformers.utils import logging as hf_logging

from depthmux.assets import minilm_path
from depthmux.backbones.base import EncodedBatch, FrozenBackbone
from depthmux.errors import DepthmuxError, require
from depthmux.utils.checkpoint import read_json
from depthmux.utils.text import is_blank

DEFAULT_MODEL = "minilm"  # resolves to the packaged MiniLM, see resolve_model_path


def resolve_model_path(model: str | os.PathLike | None) -> Path:
    """``None``/"minilm" -> the packaged MiniLM folder; otherwise an existing local folder."""
    if model is None or str(model) == DEFAULT_MODEL:
        return minilm_path()
    path = Path(model)
    if not path.is_dir():
        raise DepthmuxError(
            f"model path not found: {path} (give a local folder with config.json, or 'minilm' for the packaged default)"
        )
    if not (path / "config.json").is_file():
        raise DepthmuxError(f"model path {path} has no config.json: not a Hugging Face model folder")
    return path


def _default_readout(path: Path) -> str:
    """Mean pooling for sentence-transformers folders that say so, [CLS] otherwise."""
    pooling = path / "1_Pooling" / "config.json"
    if pooling.is_file():
        cfg = read_json(pooling, f"model folder {path}")
        if isinstance(cfg, dict) and cfg.get("pooling_mode_mean_tokens"):
            return "mean"
    return "cls"


class HFEncoderBackbone(FrozenBackbone):
    """A frozen Hugging Face encoder with layer-range execution.

    Args:
        model: a ``transformers`` BERT-family encoder (``.embeddings``, ``.encoder.layer``); load
            folders through :func:`~depthmux.backbones.load_backbone`, which checks the family.
        tokenizer: its tokenizer.
        readout: "cls" or "mean" (SPEC 1.1 step 5: the read-out position).
        name: the string that reloads it (``"minilm"`` or a path), stored in checkpoints.
    """

    def __init__(self, model, tokenizer, readout: str = "cls", name: str = DEFAULT_MODEL) -> None:
        super().__init__()
        require(readout in ("cls", "mean"), f"unknown readout {readout!r} for an encoder: choose cls or mean")
        self.model = model
        self.tokenizer = tokenizer
        self.readout_mode = readout
        self.name = name
        self.max_length = int(model.config.max_position_embeddings)
        self.freeze()

    @classmethod
    def from_pretrained(cls, model: str | os.PathLike | None = None, readout: str | None = None) -> HFEncoderBackbone:
        path = resolve_model_path(model)
        hf_logging.disable_progress_bar()  # a sub-second bar per load is noise in our own progress output
        try:
            hf = AutoModel.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
            tok = AutoTokenizer.from_pretrained(path)
        except OSError as e:
            raise DepthmuxError(f"cannot load model from {path}: {str(e).splitlines()[0]}") from None
        name = DEFAULT_MODEL if model is None or str(model) == DEFAULT_MODEL else str(Path(model).resolve())
        return cls(hf, tok, readout or _default_readout(path), name)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def num_layers(self) -> int:
        return len(self.model.encoder.layer)

    def tokenize(self, texts: list, max_length: int | None = None) -> EncodedBatch:
        limit = min(max_length or self.max_length, self.max_length)
        if len(texts) == 0:
            raise DepthmuxError("no texts to encode")
        for i, t in enumerate(texts):
            parts = t if isinstance(t, tuple) else (t,)
            if any(not isinstance(p, str) or is_blank(p) for p in parts):
                raise DepthmuxError(f"text {i} is empty")
        pairs = isinstance(texts[0], tuple)
        if pairs:
            enc = self.tokenizer([a for a, _ in texts], [b for _, b in texts], padding=True, return_tensors="pt")
        else:
            enc = self.tokenizer(list(texts), padding=True, return_tensors="pt")
        lengths = enc["attention_mask"].sum(-1)
        too_long = (lengths > limit).nonzero().flatten().tolist()
        if too_long:
            i = too_long[0]
            raise DepthmuxError(
                f"text {i} is too long: {int(lengths[i])} tokens > limit {limit} "
                f"({len(too_long)} text(s) over the limit)"
            )
        return EncodedBatch(enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids"))

    def embed(self, batch: EncodedBatch) -> torch.Tensor:
        return self.model.embeddings(input_ids=batch.input_ids, token_type_ids=batch.token_type_ids)

    def run_layers(self, hidden: torch.Tensor, attention_mask: torch.Tensor, start: int, end: int) -> torch.Tensor:
        if start == end:
            return hidden
        mask = create_bidirectional_mask(config=self.model.config, inputs_embeds=hidden, attention_mask=attention_mask)
        for layer in self.model.encoder.layer[start:end]:
            out = layer(hidden, mask)
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden
