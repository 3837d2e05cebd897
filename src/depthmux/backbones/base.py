"""The frozen-backbone interface used by multiplexing (SPEC 1.1, 1.6).

Every backbone, whatever its family, is run in the same stages (SPEC 1.1):

* ``tokenize(texts)`` -> :class:`EncodedBatch`, always RIGHT-padded (real tokens first), after
  formatting each text with the backbone's ``prompt`` template if it has one;
* ``embed`` (layer 0) and ``run_layers(h, mask, a, b)`` (blocks ``a+1..b``): the part that can be
  split at the prefill depth l and run on a composite;
* ``output_states(h, mask)``: what the model does after its last block, on whatever it is given
  (a final norm for LLaMA and ModernBERT, nothing for BERT, the encoder's final norm plus the
  whole decoder for T5), giving the states the read-out looks at;
* ``pool(states, mask)``: the read-out position (``readout_mode``), on any feature width, so the
  multiplexed path can apply it to the demultiplexed slots.

``readout = pool(output_states(...))`` is the teacher's read-out. Before mixing, the multiplexed
path calls :meth:`FrozenBackbone.align`, which moves each input's padding to the backbone's
``composite_padding`` side: right for encoders (the [CLS] of every slot at position 0), LEFT for
decoder-only models (the last real token of every slot at the last position of the group, so the
read-out demultiplexes a single position and causal attention never mixes in a slot's padding).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import nn

from depthmux.errors import DepthmuxError, require
from depthmux.utils.text import is_blank

#: read-out positions: "cls" (first position), "mean" (masked mean), "last" (last real token,
#: decoder-only), "answer" (the decoder's first output position, encoder-decoder).
READOUT_MODES = ("cls", "mean", "last", "answer")


@dataclass
class EncodedBatch:
    """Tokenised inputs, right-padded. ``input_ids``, ``attention_mask``, ``token_type_ids``: [B, S] int64."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def select(self, index: torch.Tensor | slice) -> EncodedBatch:
        tt = None if self.token_type_ids is None else self.token_type_ids[index]
        return EncodedBatch(self.input_ids[index], self.attention_mask[index], tt)

    def to(self, device: torch.device | str) -> EncodedBatch:
        """The same batch on ``device``."""
        tt = None if self.token_type_ids is None else self.token_type_ids.to(device)
        return EncodedBatch(self.input_ids.to(device), self.attention_mask.to(device), tt)


def format_prompt(template: str, text: str | tuple) -> str:
    """Fill a prompt template: ``{text}`` for a sentence, ``{text_a}`` and ``{text_b}`` for a pair."""
    if isinstance(text, tuple):
        require(
            "{text_a}" in template and "{text_b}" in template,
            f"prompt {template!r} is for one sentence, but the task gives pairs: use {{text_a}} and {{text_b}}",
        )
        return template.replace("{text_a}", text[0]).replace("{text_b}", text[1])
    require("{text}" in template, f"prompt {template!r} has no {{text}} field for the input sentence")
    return template.replace("{text}", text)


class FrozenBackbone(nn.Module, ABC):
    """A pretrained transformer whose weights never change.

    Layer indices follow SPEC 1.1: layer 0 is the embeddings, layers ``1..L`` the blocks, so
    ``run_layers(h, mask, l, L)`` runs blocks ``l+1..L`` on the output of ``Encoder_{0:l}``.
    """

    readout_mode: str  # one of READOUT_MODES
    #: the read-out modes this family supports (the first is its default)
    readout_modes: tuple[str, ...] = ("cls", "mean")
    #: which side of a group holds the padding when N inputs are mixed ("right" or "left")
    composite_padding: str = "right"
    #: "encoder", "decoder-only" or "encoder-decoder"
    kind: str = "encoder"
    #: a template applied to every text before tokenisation ({text}, or {text_a}/{text_b}); None: as is
    prompt: str | None = None
    tokenizer = None
    max_length: int = 512

    def __init__(self) -> None:
        super().__init__()

    def freeze(self) -> None:
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FrozenBackbone:
        return super().train(False)

    @property
    def device(self) -> torch.device:
        """Where the weights live (the CPU for a backbone without any); :meth:`tokenize` puts its batches there."""
        tensor = next(self.parameters(), None)
        if tensor is None:
            tensor = next(self.buffers(), None)
        return tensor.device if tensor is not None else torch.device("cpu")

    @property
    @abstractmethod
    def hidden_size(self) -> int: ...

    @property
    @abstractmethod
    def num_layers(self) -> int: ...

    def check_readout(self, readout: str) -> str:
        require(
            readout in self.readout_modes,
            f"readout {readout!r} does not fit a {self.kind} model ({type(self).__name__}): "
            f"choose {' or '.join(self.readout_modes)}",
        )
        return readout

    # ---- tokenisation -------------------------------------------------------------------------
    def format_texts(self, texts: list) -> list:
        """Apply :attr:`prompt` to every text (sentences or pairs); unchanged without a prompt."""
        if self.prompt is None:
            return list(texts)
        return [format_prompt(self.prompt, t) for t in texts]

    def tokenize(self, texts: list, max_length: int | None = None) -> EncodedBatch:
        """Tokenise sentences or (a, b) pairs, right-padded, on :attr:`device`; empty or over-long texts
        raise DepthmuxError."""
        limit = min(max_length or self.max_length, self.max_length)
        if len(texts) == 0:
            raise DepthmuxError("no texts to encode")
        for i, t in enumerate(texts):
            parts = t if isinstance(t, tuple) else (t,)
            if any(not isinstance(p, str) or is_blank(p) for p in parts):
                raise DepthmuxError(f"text {i} is empty")
        enc = self._tokenize(self.format_texts(texts))
        lengths = enc.attention_mask.sum(-1)
        too_long = (lengths > limit).nonzero().flatten().tolist()
        if too_long:
            i = too_long[0]
            raise DepthmuxError(
                f"text {i} is too long: {int(lengths[i])} tokens > limit {limit} "
                f"({len(too_long)} text(s) over the limit)"
            )
        return enc.to(self.device)

    def token_counts(self, texts: list[str]) -> list[int]:
        """Tokens of each (formatted) text with the special tokens, as :meth:`tokenize` would count them,
        without padding or tensors: the fast tokenizer's Rust encoder when there is one (a fraction of the
        Python call's cost; a server counts every request). Not thread-safe (the tokenizer's padding
        state): callers that share the tokenizer across threads hold their lock."""
        formatted = self.format_texts(texts)
        backend = getattr(self.tokenizer, "backend_tokenizer", None) if self.tokenizer.is_fast else None
        if backend is None:
            return [len(x) for x in self.tokenizer(formatted)["input_ids"]]
        backend.no_padding()
        backend.no_truncation()
        return [len(e.ids) for e in backend.encode_batch(formatted, add_special_tokens=True)]

    def _tokenize(self, texts: list) -> EncodedBatch:
        """Formatted texts -> right-padded batch. Pairs go to the tokenizer as pairs (segment ids)."""
        if isinstance(texts[0], tuple):
            enc = self.tokenizer([a for a, _ in texts], [b for _, b in texts], padding=True, return_tensors="pt")
        else:
            enc = self.tokenizer(list(texts), padding=True, return_tensors="pt")
        return EncodedBatch(enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids"))

    # ---- the stages ---------------------------------------------------------------------------
    @abstractmethod
    def embed(self, batch: EncodedBatch) -> torch.Tensor:
        """Layer 0: [B, S] tokens -> [B, S, d] hidden states."""

    @abstractmethod
    def run_layers(self, hidden: torch.Tensor, attention_mask: torch.Tensor, start: int, end: int) -> torch.Tensor:
        """Blocks ``start+1..end`` (i.e. ``Encoder_{start:end}``): [B, S, d] -> [B, S, d]."""

    def output_states(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """After the last block: [B, S, d], mask [B, S] -> states [B, S', d], mask [B, S'] (here: unchanged)."""
        return hidden, attention_mask

    def output_mask(self, attention_mask: torch.Tensor) -> torch.Tensor:
        """The mask [.., S'] of :meth:`output_states` for inputs with mask [.., S] (here: unchanged)."""
        return attention_mask

    def check_prefill(self, prefill_layers: int) -> None:
        require(
            0 <= prefill_layers < self.num_layers,
            f"prefill layers l={prefill_layers} must satisfy 0 <= l < {self.num_layers} "
            f"(the backbone has {self.num_layers} layers)",
        )

    def prefill(self, batch: EncodedBatch, prefill_layers: int) -> torch.Tensor:
        """``h = Encoder_{0:l}(X)``: [B, S] -> [B, S, d] (SPEC 1.1 step 1)."""
        self.check_prefill(prefill_layers)
        return self.run_layers(self.embed(batch), batch.attention_mask, 0, prefill_layers)

    def align(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Move each row's padding to :attr:`composite_padding` and cut S to the longest input.

        [B, S, d], [B, S] -> [B, S', d], [B, S']. A stable sort of the mask keeps every input's
        tokens in order; right-padded rows and ``composite_padding == "right"`` give them back unchanged.
        """
        S = int(attention_mask.sum(-1).max())
        order = torch.sort(attention_mask, dim=-1, descending=self.composite_padding == "right", stable=True).indices
        order = order[:, :S] if self.composite_padding == "right" else order[:, -S:]
        hidden = torch.gather(hidden, 1, order[..., None].expand(-1, -1, hidden.shape[-1]))
        return hidden, torch.gather(attention_mask, 1, order)

    def readout_window(self, states: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cut aligned states [.., S', w] and masks [.., S'] to the positions :meth:`pool` reads."""
        if self.readout_mode in ("cls", "answer"):
            return states[..., :1, :], mask[..., :1]
        if self.readout_mode == "last":
            require(self.composite_padding == "left", "the 'last' read-out of a composite needs left padding")
            return states[..., -1:, :], mask[..., -1:]
        return states, mask

    def pool(self, states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The read-out position: [.., S, w] states -> [.., w], with each input's own mask [.., S]."""
        if self.readout_mode in ("cls", "answer"):
            return states[..., 0, :]
        mask = attention_mask.to(states.dtype).unsqueeze(-1)
        if self.readout_mode == "mean":
            return (states * mask).sum(-2) / mask.sum(-2).clamp_min(1.0)
        if self.readout_mode == "last":  # the last real token, whichever side the padding is on
            positions = torch.arange(1, attention_mask.shape[-1] + 1, device=attention_mask.device)
            last = (attention_mask.long() * positions).argmax(-1)
            return torch.gather(
                states, -2, last[..., None, None].expand(*states.shape[:-2], 1, states.shape[-1])
            ).squeeze(-2)
        raise DepthmuxError(f"unknown readout {self.readout_mode!r}: choose one of {list(READOUT_MODES)}")

    def readout(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The teacher's read-out from the states after block L: [B, S, d] -> [B, d]."""
        return self.pool(*self.output_states(hidden, attention_mask))

    @torch.no_grad()
    def encode(self, batch: EncodedBatch) -> torch.Tensor:
        """The teacher's read-out: full frozen model, N = 1. [B, S] -> [B, d]."""
        hidden = self.run_layers(self.embed(batch), batch.attention_mask, 0, self.num_layers)
        return self.readout(hidden, batch.attention_mask)

    # ---- language-model heads -----------------------------------------------------------------
    def output_embeddings(self) -> torch.Tensor:
        """The frozen LM head's weight [V, d], scaled as the model scales its logits (verbalizers)."""
        raise DepthmuxError(
            f"{type(self).__name__} ({self.kind}) has no language-model head: a verbalizer needs a "
            "decoder-only or encoder-decoder model; use the linear probe"
        )
