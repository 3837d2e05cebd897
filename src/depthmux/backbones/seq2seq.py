"""Encoder-decoder models (the T5 family: t5, mt5) as a :class:`FrozenBackbone` (SPEC 1.6).

Mux happens inside the ENCODER at layer l: ``embed`` and ``run_layers`` are the encoder's
embeddings and blocks (``num_layers`` counts encoder blocks). After the last encoder block,
:meth:`HFSeq2SeqBackbone.output_states` applies the encoder's final norm and runs the whole
decoder, one step from the decoder start token, cross-attending to the (composite) encoder
output under its padding mask: the decoder output at that step is the **answer position**,
[B, 1, d], the position the read-out (and the demultiplexer) reads. The LM head at that position
predicts the first answer token, which is what the verbalizer scores.

Every encoder block gets the relative position bias computed by the first block's attention
(only the first block owns the bias table), so running blocks ``l+1..L`` alone is the model's own
computation. No pretrained T5 ships offline: load any local T5 folder by path.
"""

from __future__ import annotations

import os

import torch
from transformers import AutoModelForSeq2SeqLM
from transformers.masking_utils import create_bidirectional_mask

from depthmux.backbones.base import EncodedBatch, FrozenBackbone
from depthmux.backbones.loading import load_hf_model, load_hf_tokenizer, model_name, resolve_model_path


class HFSeq2SeqBackbone(FrozenBackbone):
    """A frozen T5-family encoder-decoder with layer-range execution of its encoder.

    Args:
        model: a ``transformers`` ``T5ForConditionalGeneration`` (or MT5).
        tokenizer: its tokenizer.
        readout: "answer" (the decoder's first output position).
        name: the folder that reloads it.
        prompt: template applied to every text ({text}, or {text_a}/{text_b}); without one, a
            pair is joined by a newline.
    """

    kind = "encoder-decoder"
    readout_modes = ("answer",)
    composite_padding = "right"

    def __init__(self, model, tokenizer, readout: str = "answer", name: str = "t5", prompt: str | None = None):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.readout_mode = self.check_readout(readout)
        self.name = name
        self.prompt = prompt
        self.max_length = 512  # relative positions have no table limit; T5's training length
        self.freeze()

    @classmethod
    def from_pretrained(
        cls, model: str | os.PathLike, readout: str | None = None, prompt: str | None = None
    ) -> HFSeq2SeqBackbone:
        path = resolve_model_path(model)
        hf, tok = load_hf_model(path, AutoModelForSeq2SeqLM), load_hf_tokenizer(path)
        return cls(hf, tok, readout or "answer", model_name(model), prompt)

    @property
    def encoder(self):
        return self.model.get_encoder()

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.d_model)

    @property
    def num_layers(self) -> int:
        return len(self.encoder.block)

    def format_texts(self, texts: list) -> list:
        if self.prompt is None:
            return [f"{t[0]}\n{t[1]}" if isinstance(t, tuple) else t for t in texts]
        return super().format_texts(texts)

    def _tokenize(self, texts: list) -> EncodedBatch:
        enc = self.tokenizer(list(texts), padding=True, return_tensors="pt")
        return EncodedBatch(enc["input_ids"], enc["attention_mask"])

    def embed(self, batch: EncodedBatch) -> torch.Tensor:
        return self.encoder.embed_tokens(batch.input_ids)

    def run_layers(self, hidden: torch.Tensor, attention_mask: torch.Tensor, start: int, end: int) -> torch.Tensor:
        if start == end:
            return hidden
        encoder = self.encoder
        mask = create_bidirectional_mask(config=encoder.config, inputs_embeds=hidden, attention_mask=attention_mask)
        S = hidden.shape[1]
        position_bias = encoder.block[0].layer[0].SelfAttention.compute_bias(S, S, device=hidden.device)
        for block in encoder.block[start:end]:
            hidden = block(hidden, mask, position_bias)[0]
        return hidden

    def output_states(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder final norm, then the decoder's first step: [B, S, d] -> [B, 1, d], mask [B, 1]."""
        encoded = self.encoder.final_layer_norm(hidden)
        start = torch.full(
            (hidden.shape[0], 1), self.model.config.decoder_start_token_id, dtype=torch.long, device=hidden.device
        )
        out = self.model.get_decoder()(
            input_ids=start, encoder_hidden_states=encoded, encoder_attention_mask=attention_mask, use_cache=False
        ).last_hidden_state
        return out, self.output_mask(attention_mask)

    def output_mask(self, attention_mask: torch.Tensor) -> torch.Tensor:
        return attention_mask.new_ones(*attention_mask.shape[:-1], 1)

    def output_embeddings(self) -> torch.Tensor:
        weight = self.model.get_output_embeddings().weight
        if getattr(self.model.config, "scale_decoder_outputs", False):  # tied embeddings: logits of h * d^-0.5
            return weight * self.hidden_size**-0.5
        return weight
