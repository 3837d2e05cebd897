"""Hugging Face encoders as a :class:`FrozenBackbone`, run layer range by layer range.

One class per way of calling the layers (each checked against the model's own forward in the
tests, < 1e-5, from the transformers source the project pins):

* :class:`HFEncoderBackbone` -- the BERT family (bert, roberta, xlm-roberta, camembert, electra):
  ``embeddings`` + ``encoder.layer``, each layer called as ``layer(hidden, mask)``;
* :class:`MPNetBackbone` -- the same, plus the relative position bias every layer adds to its scores;
* :class:`DebertaV2Backbone` -- the relative embeddings and relative positions every layer takes,
  the padding-masked embeddings and the convolution after the first layer;
* :class:`ModernBertBackbone` -- rotary position embeddings per attention type, alternating global
  and sliding-window masks, and the final norm (in :meth:`~FrozenBackbone.output_states`).

The default model is the packaged all-MiniLM-L6-v2 (a BERT, mean pooling). Load folders through
:func:`~depthmux.backbones.load_backbone`, which picks the class by ``model_type``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers.masking_utils import create_bidirectional_mask, create_bidirectional_sliding_window_mask

from depthmux.backbones.base import EncodedBatch, FrozenBackbone
from depthmux.backbones.loading import (
    DEFAULT_MODEL,
    load_hf_model,
    load_hf_tokenizer,
    model_name,
    resolve_model_path,
)
from depthmux.utils.checkpoint import read_json

__all__ = [
    "DEFAULT_MODEL",
    "DebertaV2Backbone",
    "HFEncoderBackbone",
    "MPNetBackbone",
    "ModernBertBackbone",
    "resolve_model_path",
]


def _default_readout(path: Path) -> str:
    """Mean pooling for sentence-transformers folders that say so, [CLS] otherwise."""
    pooling = path / "1_Pooling" / "config.json"
    if pooling.is_file():
        cfg = read_json(pooling, f"model folder {path}")
        if isinstance(cfg, dict) and cfg.get("pooling_mode_mean_tokens"):
            return "mean"
    return "cls"


class HFEncoderBackbone(FrozenBackbone):
    """A frozen Hugging Face encoder of the BERT family with layer-range execution.

    Args:
        model: a ``transformers`` encoder (``.embeddings``, ``.encoder.layer``); load folders
            through :func:`~depthmux.backbones.load_backbone`, which checks the family.
        tokenizer: its tokenizer.
        readout: "cls" or "mean" (SPEC 1.1 step 5: the read-out position).
        name: the string that reloads it (``"minilm"`` or a path), stored in checkpoints.
        prompt: a template applied to every text before tokenisation (None: the text as is).
    """

    kind = "encoder"
    readout_modes = ("cls", "mean")

    def __init__(self, model, tokenizer, readout: str = "cls", name: str = DEFAULT_MODEL, prompt: str | None = None):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.readout_mode = self.check_readout(readout)
        self.name = name
        self.prompt = prompt
        self.max_length = int(model.config.max_position_embeddings)
        self.freeze()

    @classmethod
    def from_pretrained(
        cls, model: str | os.PathLike | None = None, readout: str | None = None, prompt: str | None = None
    ) -> HFEncoderBackbone:
        path = resolve_model_path(model)
        hf, tok = load_hf_model(path), load_hf_tokenizer(path)
        return cls(hf, tok, readout or _default_readout(path), model_name(model), prompt)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def layers(self) -> torch.nn.ModuleList:
        return self.model.encoder.layer

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def embed(self, batch: EncodedBatch) -> torch.Tensor:
        hidden = self.model.embeddings(input_ids=batch.input_ids, token_type_ids=batch.token_type_ids)
        project = getattr(self.model, "embeddings_project", None)  # ELECTRA: embedding size -> hidden size
        return hidden if project is None else project(hidden)

    def attention_mask(self, hidden: torch.Tensor, attention_mask: torch.Tensor):
        """[B, S] -> the mask the layers take (4-D, in the format of the attention implementation)."""
        return create_bidirectional_mask(config=self.model.config, inputs_embeds=hidden, attention_mask=attention_mask)

    def run_layers(self, hidden: torch.Tensor, attention_mask: torch.Tensor, start: int, end: int) -> torch.Tensor:
        if start == end:
            return hidden
        mask = self.attention_mask(hidden, attention_mask)
        for layer in self.layers[start:end]:
            out = layer(hidden, mask)
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden


class MPNetBackbone(HFEncoderBackbone):
    """MPNet: every layer adds the encoder's relative position bias [B, H, S, S] to its scores."""

    def embed(self, batch: EncodedBatch) -> torch.Tensor:
        return self.model.embeddings(input_ids=batch.input_ids)

    def run_layers(self, hidden: torch.Tensor, attention_mask: torch.Tensor, start: int, end: int) -> torch.Tensor:
        if start == end:
            return hidden
        mask = self.attention_mask(hidden, attention_mask)
        position_bias = self.model.encoder.compute_position_bias(hidden)
        for layer in self.layers[start:end]:
            hidden = layer(hidden, mask, position_bias)[0]
        return hidden


class DebertaV2Backbone(HFEncoderBackbone):
    """DeBERTa-v2/v3: disentangled attention over relative positions. Every layer takes the
    relative embeddings and relative positions; the embeddings are zeroed at padding; an optional
    convolution mixes the embeddings into the first layer's output."""

    def embed(self, batch: EncodedBatch) -> torch.Tensor:
        return self.model.embeddings(
            input_ids=batch.input_ids, token_type_ids=batch.token_type_ids, mask=batch.attention_mask
        )

    def run_layers(self, hidden: torch.Tensor, attention_mask: torch.Tensor, start: int, end: int) -> torch.Tensor:
        if start == end:
            return hidden
        encoder = self.model.encoder
        mask = encoder.get_attention_mask(attention_mask)
        relative_pos = encoder.get_rel_pos(hidden)
        rel_embeddings = encoder.get_rel_embedding()
        for i in range(start, end):
            out = self.layers[i](hidden, mask, relative_pos=relative_pos, rel_embeddings=rel_embeddings)[0]
            if i == 0 and encoder.conv is not None:
                out = encoder.conv(hidden, out, attention_mask)
            hidden = out
        return hidden


class ModernBertBackbone(HFEncoderBackbone):
    """ModernBERT: rotary positions (one table per attention type), global and sliding-window
    layers with their own masks, and a final norm after the last layer (part of the read-out)."""

    @property
    def layers(self) -> torch.nn.ModuleList:
        return self.model.layers

    def embed(self, batch: EncodedBatch) -> torch.Tensor:
        return self.model.embeddings(input_ids=batch.input_ids)

    def run_layers(self, hidden: torch.Tensor, attention_mask: torch.Tensor, start: int, end: int) -> torch.Tensor:
        if start == end:
            return hidden
        config = self.model.config
        kw = {"config": config, "inputs_embeds": hidden, "attention_mask": attention_mask}
        masks = {
            "full_attention": create_bidirectional_mask(**kw),
            "sliding_attention": create_bidirectional_sliding_window_mask(**kw),
        }
        position_ids = torch.arange(hidden.shape[1], device=hidden.device)[None]
        rotary = {t: self.model.rotary_emb(hidden, position_ids, t) for t in set(config.layer_types)}
        for layer in self.layers[start:end]:
            t = layer.attention_type
            hidden = layer(hidden, attention_mask=masks[t], position_embeddings=rotary[t])
        return hidden

    def output_states(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.final_norm(hidden), attention_mask
