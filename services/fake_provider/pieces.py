"""Cutting a text into the pieces a fake stream sends, and counting prompt words."""

from __future__ import annotations

from collections.abc import Iterable


def split_reply(text: str, count: int) -> tuple[str, ...]:
    """`text` in `count` pieces that concatenate back to it, cut at word boundaries.

    With fewer words than pieces asked for, cuts fall inside words instead (evenly by
    characters), so a benchmark gets the chunk count it asked for; never more pieces
    than characters.
    """
    if not text or count <= 1:
        return (text,) if text else ()
    words = _words(text)
    if len(words) >= count:
        return tuple("".join(group) for group in _even_groups(words, count))
    return tuple("".join(group) for group in _even_groups(list(text), min(count, len(text))))


def _words(text: str) -> list[str]:
    """Words with their trailing whitespace; leading whitespace stays with the first."""
    words: list[str] = []
    start = 0
    i = 0
    n = len(text)
    while i < n and text[i].isspace():
        i += 1
    while i < n:
        while i < n and not text[i].isspace():
            i += 1
        while i < n and text[i].isspace():
            i += 1
        words.append(text[start:i])
        start = i
    return words or [text]


def _even_groups(items: list[str], count: int) -> Iterable[list[str]]:
    size, extra = divmod(len(items), count)
    start = 0
    for k in range(count):
        end = start + size + (1 if k < extra else 0)
        yield items[start:end]
        start = end


def count_tokens(texts: Iterable[str]) -> int:
    """The fake's prompt tokens: whitespace-separated words plus 4 per message."""
    return sum(len(text.split()) + 4 for text in texts)
