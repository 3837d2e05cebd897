"""Decoder-only language models (the LLaMA family: llama, mistral, qwen2, qwen3) as a
:class:`FrozenBackbone` (SPEC 1.6): causal attention, read-out at each input's last real token.

Positions and padding, the part that has to line up across the N slots of a composite:

* ``tokenize`` right-pads (like every backbone); position ids are counted over real tokens only
  (``cumsum(mask) - 1``), so an input's states do not depend on how much padding it gets.
* The multiplexed path calls :meth:`~FrozenBackbone.align` with ``composite_padding = "left"``:
  each slot's real tokens are moved to the END of the group, so the N last real tokens share the
  group's last position, which is the only position demultiplexed (``readout_window``). The
  composite runs with the group's own positions (``cumsum`` of the OR mask): the longest input
  keeps its prefill positions, a shorter one is shifted as a block, so distances between its
  tokens (all that rotary attention sees) are unchanged.
* The causal mask is built here: key k is visible to query q iff ``k <= q``, k is a real token
  (and within the sliding window, for sliding layers); a padded query also sees itself, so that
  the leading padding of a left-aligned group is never a fully masked (NaN) row.

The read-out is the final norm at the last real token, the input of the LM head; the verbalizer
head (:mod:`depthmux.multiplexing.heads`) uses that LM head through :meth:`output_embeddings`.
"""

from __future__ import annotations

import os

import torch
from transformers import AutoModelForCausalLM

from depthmux.backbones.base import EncodedBatch, FrozenBackbone, format_prompt
from depthmux.backbones.loading import load_hf_model, load_hf_tokenizer, model_name, resolve_model_path


def causal_attention_mask(
    attention_mask: torch.Tensor, implementation: str, dtype: torch.dtype, sliding_window: int | None = None
) -> torch.Tensor:
    """[B, S] padding mask -> the 4-D mask [B, 1, S, S] the layers take: boolean for SDPA, additive
    (0 or the dtype's minimum) for eager attention."""
    S = attention_mask.shape[-1]
    q = torch.arange(S, device=attention_mask.device)[:, None]
    k = torch.arange(S, device=attention_mask.device)[None, :]
    allowed = (k <= q) & attention_mask.bool()[:, None, None, :]
    if sliding_window is not None:
        allowed = allowed & (q - k < sliding_window)
    allowed = allowed | (q == k)  # a padded query sees itself: no fully masked rows
    if implementation == "sdpa":
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


class HFDecoderBackbone(FrozenBackbone):
    """A frozen Hugging Face causal LM of the LLaMA family, run layer range by layer range.

    Args:
        model: a ``transformers`` ``*ForCausalLM`` with ``.model.embed_tokens``, ``.model.layers``,
            ``.model.norm``, ``.model.rotary_emb`` (LLaMA, Mistral, Qwen2, Qwen3).
        tokenizer: its tokenizer (a missing pad token is set to EOS; padding goes right).
        readout: "last" (the only read-out of a decoder-only model).
        name: the string that reloads it ("smollm2" or a folder).
        prompt: template applied to every text ({text}, or {text_a}/{text_b} for pairs). Without
            one, a pair is joined by a newline.
    """

    kind = "decoder-only"
    readout_modes = ("last",)
    composite_padding = "left"

    def __init__(self, model, tokenizer, readout: str = "last", name: str = "smollm2", prompt: str | None = None):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "right"
        self.readout_mode = self.check_readout(readout)
        self.name = name
        self.prompt = prompt
        self.max_length = int(model.config.max_position_embeddings)
        self.freeze()

    @classmethod
    def from_pretrained(
        cls, model: str | os.PathLike | None = "smollm2", readout: str | None = None, prompt: str | None = None
    ) -> HFDecoderBackbone:
        path = resolve_model_path(model)
        hf, tok = load_hf_model(path, AutoModelForCausalLM), load_hf_tokenizer(path)
        return cls(hf, tok, readout or "last", model_name(model), prompt)

    @property
    def body(self):
        return self.model.model

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def num_layers(self) -> int:
        return len(self.body.layers)

    def format_texts(self, texts: list) -> list:
        if self.prompt is None:
            return [f"{t[0]}\n{t[1]}" if isinstance(t, tuple) else t for t in texts]
        return [format_prompt(self.prompt, t) for t in texts]

    def embed(self, batch: EncodedBatch) -> torch.Tensor:
        return self.body.embed_tokens(batch.input_ids)

    def _layer_window(self, index: int) -> int | None:
        """The sliding window of layer ``index`` (None: full causal attention)."""
        config = self.model.config
        window = getattr(config, "sliding_window", None)
        types = getattr(config, "layer_types", None)
        if types is not None:
            return window if types[index] == "sliding_attention" else None
        return window

    def run_layers(self, hidden: torch.Tensor, attention_mask: torch.Tensor, start: int, end: int) -> torch.Tensor:
        if start == end:
            return hidden
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)  # [B, S]: real tokens count 0, 1, ...
        rotary = self.body.rotary_emb(hidden, position_ids=position_ids)
        implementation = self.model.config._attn_implementation
        masks: dict[int | None, torch.Tensor] = {}
        for i in range(start, end):
            window = self._layer_window(i)
            if window not in masks:
                masks[window] = causal_attention_mask(attention_mask, implementation, hidden.dtype, window)
            hidden = self.body.layers[i](
                hidden, attention_mask=masks[window], position_ids=position_ids, position_embeddings=rotary
            )
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        return hidden

    def output_states(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.body.norm(hidden), attention_mask

    def output_embeddings(self) -> torch.Tensor:
        return self.model.get_output_embeddings().weight
