"""Frozen task heads: the read-out vector of one input -> class logits (SPEC 1.2).

The teacher and the multiplexed classifier share one head; it never trains while the adapters
do. Every head has the same interface, :class:`TaskHead`: ``forward(readout [B, d]) -> [B, C]``,
a JSON ``description()`` stored in checkpoints, and ``from_description(description, backbone)``
that rebuilds it (its tensors, if any, are loaded afterwards with ``load_state_dict``).

* :class:`LinearProbeHead` -- logistic regression trained once on the teacher's read-outs;
* :class:`VerbalizerHead` -- for language models (decoder-only, encoder-decoder): the frozen LM
  head restricted to one token per label ("negative"/"positive"), applied to the read-out (the
  final-norm state at the last real token, or T5's answer position). Nothing is trained: it has no
  tensors of its own and takes the LM head rows from the backbone in ``from_description``. It
  goes with a prompt the backbone applies to every text (:data:`TASK_VERBALIZERS` per built-in
  task). A label word that is not exactly one token is refused with one line (taking its first
  token instead could make two labels share a token, or score a word the prompt never asks for).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from depthmux.backbones import FrozenBackbone
from depthmux.errors import DepthmuxError, require


class TaskHead(nn.Module, ABC):
    """Interface: a frozen map from the read-out ``[B, d]`` to logits ``[B, num_labels]``."""

    #: the name stored in checkpoints (``description()["kind"]``), key of :data:`HEADS`.
    kind: ClassVar[str]
    num_labels: int

    @abstractmethod
    def forward(self, readout: torch.Tensor) -> torch.Tensor:
        """[B, d] -> [B, C]."""

    @abstractmethod
    def description(self) -> dict:
        """JSON-able arguments that rebuild this head (its tensors are saved separately)."""

    @classmethod
    @abstractmethod
    def from_description(cls, description: dict, backbone: FrozenBackbone) -> TaskHead:
        """Rebuild an (untrained) head from :meth:`description`; load its tensors afterwards."""

    def freeze(self) -> TaskHead:
        for p in self.parameters():
            p.requires_grad_(False)
        return self


class LinearProbeHead(TaskHead):
    """``logits = readout @ W^T + b``, W [C, d], trained once by :func:`~depthmux.multiplexing.train_probe`."""

    kind = "linear_probe"

    def __init__(self, d_model: int, num_labels: int) -> None:
        super().__init__()
        self.d_model, self.num_labels = d_model, num_labels
        self.weight = nn.Parameter(torch.zeros(num_labels, d_model))
        self.bias = nn.Parameter(torch.zeros(num_labels))

    def forward(self, readout: torch.Tensor) -> torch.Tensor:
        return F.linear(readout, self.weight, self.bias)

    def description(self) -> dict:
        return {"kind": self.kind, "d_model": self.d_model, "num_labels": self.num_labels}

    @classmethod
    def from_description(cls, description: dict, backbone: FrozenBackbone) -> LinearProbeHead:
        if description.get("d_model") != backbone.hidden_size:
            raise DepthmuxError(
                f"the linear probe reads width {description.get('d_model')}, but the backbone's "
                f"hidden size is {backbone.hidden_size}"
            )
        return cls(backbone.hidden_size, int(description["num_labels"]))


def label_token_ids(backbone: FrozenBackbone, label_words: list[str]) -> list[int]:
    """One vocabulary id per label word; one line for a word that is not exactly one token, or
    for two words that are the same token."""
    require(
        isinstance(label_words, list | tuple)
        and len(label_words) >= 2
        and all(isinstance(w, str) and w for w in label_words),
        f"a verbalizer needs >= 2 non-empty label words, got {label_words!r}",
    )
    tokenizer = backbone.tokenizer
    ids = []
    for word in label_words:
        pieces = tokenizer(word, add_special_tokens=False)["input_ids"]
        if len(pieces) != 1:
            raise DepthmuxError(
                f"verbalizer label word {word!r} is {len(pieces)} tokens "
                f"{tokenizer.convert_ids_to_tokens(pieces)} for {backbone.name}'s tokenizer: each label word "
                "must be exactly one token (try it with or without a leading space, or another word)"
            )
        ids.append(int(pieces[0]))
    require(len(set(ids)) == len(ids), f"verbalizer label words {label_words!r} share a token: {ids}")
    return ids


class VerbalizerHead(TaskHead):
    """``logits[c] = readout · E[token(label_word_c)]``: the frozen LM head restricted to the label
    words (SPEC 1.2). ``E`` [V, d] is ``backbone.output_embeddings()`` (scaled as the model scales
    its logits); the rows kept here are a non-persistent buffer, rebuilt from the backbone on load.

    Args:
        label_words: one word per label, in label-id order (e.g. [" negative", " positive"]).
        token_ids: their vocabulary ids (see :func:`label_token_ids`).
        weight: the LM head rows of those ids, [C, d].
    """

    kind = "verbalizer"

    def __init__(self, label_words: list[str], token_ids: list[int], weight: torch.Tensor) -> None:
        super().__init__()
        self.label_words, self.token_ids = list(label_words), list(token_ids)
        self.num_labels = len(label_words)
        self.register_buffer("weight", weight.detach().clone(), persistent=False)

    @classmethod
    def from_backbone(cls, backbone: FrozenBackbone, label_words: list[str]) -> VerbalizerHead:
        ids = label_token_ids(backbone, label_words)
        return cls(label_words, ids, backbone.output_embeddings()[ids]).freeze()

    def forward(self, readout: torch.Tensor) -> torch.Tensor:
        return readout @ self.weight.T

    def description(self) -> dict:
        return {"kind": self.kind, "label_words": self.label_words, "token_ids": self.token_ids}

    @classmethod
    def from_description(cls, description: dict, backbone: FrozenBackbone) -> VerbalizerHead:
        head = cls.from_backbone(backbone, description.get("label_words"))
        if head.token_ids != description.get("token_ids"):
            raise DepthmuxError(
                f"the verbalizer's label words map to tokens {head.token_ids} in {backbone.name}'s tokenizer, "
                f"not the saved {description.get('token_ids')}: a different tokenizer"
            )
        return head


@dataclass(frozen=True)
class Verbalization:
    """How a task is asked of a language model: the prompt (``{text}``, or ``{text_a}``/``{text_b}``
    for pairs) and one label word per label, in label-id order."""

    prompt: str
    label_words: tuple[str, ...]


#: built-in tasks (label order as in ``depthmux.data``) -> their prompt and label words
TASK_VERBALIZERS: dict[str, Verbalization] = {
    "sst2": Verbalization("Review: {text}\nSentiment:", (" negative", " positive")),
    "tweets": Verbalization("Tweet: {text}\nSentiment:", (" negative", " positive")),
    "mrpc": Verbalization(
        "Sentence 1: {text_a}\nSentence 2: {text_b}\nDo both sentences mean the same thing?\nAnswer:", (" no", " yes")
    ),
    "rte": Verbalization("{text_a}\nQuestion: {text_b} True or false?\nAnswer:", (" false", " true")),
    "qnli": Verbalization(
        "Question: {text_a}\nSentence: {text_b}\nDoes the sentence answer the question?\nAnswer:", (" no", " yes")
    ),
}


def task_verbalization(
    task: str | None, label_names: list[str] | None = None, pairs: bool = False, prompt: str | None = None
) -> Verbalization:
    """The prompt and label words for a verbalizer.

    A built-in task (:data:`TASK_VERBALIZERS`) gives its own (``prompt`` overrides its prompt).
    Any other data set (a user's file) uses ``prompt`` or a plain default ("{text}\\nAnswer:", or
    "{text_a}\\n{text_b}\\nAnswer:" for pairs) and its label names as the words, each with a
    leading space (" negative"); a name that is not one token is refused by :func:`label_token_ids`.
    """
    if task in TASK_VERBALIZERS:
        builtin = TASK_VERBALIZERS[task]
        require(
            label_names is None or len(label_names) == len(builtin.label_words),
            f"task {task!r} has {len(label_names or [])} labels, its verbalizer {len(builtin.label_words)} words",
        )
        return Verbalization(prompt or builtin.prompt, builtin.label_words)
    require(
        label_names is not None and len(label_names) >= 2,
        f"no verbalizer for task {task!r}: give its label names (built in for {', '.join(TASK_VERBALIZERS)})",
    )
    default = "{text_a}\n{text_b}\nAnswer:" if pairs else "{text}\nAnswer:"
    return Verbalization(prompt or default, tuple(" " + name.strip() for name in label_names))


HEADS: dict[str, type[TaskHead]] = {LinearProbeHead.kind: LinearProbeHead, VerbalizerHead.kind: VerbalizerHead}


def head_from_description(description: dict, backbone: FrozenBackbone) -> TaskHead:
    """Rebuild a head of any registered kind (see :data:`HEADS`)."""
    kind = description.get("kind")
    if kind not in HEADS:
        raise DepthmuxError(f"unknown task head {kind!r}: choose one of {list(HEADS)}")
    return HEADS[kind].from_description(description, backbone)
