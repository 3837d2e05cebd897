"""Last-word cloze passages from held-out documents (LAMBADA-style, issue 19 few-shot tasks).

``cloze_passages(docs)`` cuts each document into passages of whole lines holding ``min_words`` to
``max_words`` words and keeps those whose last word is a plain alphabetic word of at least
``min_target_chars`` letters (trailing punctuation dropped); the passage without that word is the
context and ``" " + word`` the target. Passages are taken in document order, at most
``per_document`` from each document, so the result is deterministic.

The documents should be the *held-out* side of the split the LM runs train against
(:func:`held_out_documents`: :func:`depthmux.data.text.split_corpus` with the same holdout and
seed as ``depthmux lm train`` / ``lm build-mor`` / ``ee train``, by default 0.1 and 0), so no
model uptrained here has seen a cloze passage.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from depthmux.data.text import split_corpus
from depthmux.errors import DepthmuxError

_WORD = re.compile(r"^([A-Za-z]+)[^A-Za-z]*$")


def held_out_documents(corpus: str, holdout: float = 0.1, seed: int = 0) -> list[str]:
    """The held-out documents of ``corpus`` under the LM runs' split (see the module docstring)."""
    return split_corpus(corpus, holdout, seed)[1]


def cloze_passages(
    docs: Sequence[str],
    min_words: int = 40,
    max_words: int = 120,
    min_target_chars: int = 3,
    per_document: int = 4,
    max_passages: int | None = None,
) -> list[dict[str, str]]:
    """``[{"context", "target", "text"}]``: ``context`` + ``target`` == ``text`` (target starts with a space)."""
    if not 1 <= min_words <= max_words:
        raise DepthmuxError(f"cloze passages need 1 <= min_words <= max_words, got {min_words}, {max_words}")
    out: list[dict[str, str]] = []
    for doc in docs:
        taken = 0
        lines: list[str] = []
        words = 0
        for line in doc.splitlines():
            line = line.strip()
            if not line:
                continue
            lines.append(line)
            words += len(line.split())
            if words > max_words:
                lines, words = [line], len(line.split())
            if words < min_words:
                continue
            text = "\n".join(lines)
            head, _, last = text.rpartition(" ")
            m = _WORD.match(last)
            if head and m and len(m.group(1)) >= min_target_chars and "\n" not in last:
                out.append({"context": head, "target": " " + m.group(1), "text": head + " " + m.group(1)})
                taken += 1
                if max_passages is not None and len(out) >= max_passages:
                    return out
            lines, words = [], 0
            if taken >= per_document:
                break
    return out
