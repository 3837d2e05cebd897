"""Text checks shared by the data readers and the tokenising backbones."""

from __future__ import annotations

#: Characters that render as nothing but are not ``str.isspace()`` (zero-width space/joiners,
#: word joiner, BOM used as zero-width no-break space).
INVISIBLE = "\u200b\u200c\u200d\u2060\ufeff"


def is_blank(text: str) -> bool:
    """True for a text of only whitespace (incl. non-breaking spaces) and zero-width characters."""
    return not text.translate({ord(c): None for c in INVISIBLE}).strip()
