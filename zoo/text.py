"""English for messages: articles and plurals."""

from __future__ import annotations


def article(word: str) -> str:
    """`word` with its indefinite article: "an int", "a layer"."""
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"


def plural(count: int, word: str, many: str | None = None) -> str:
    """`1 step`, `2 steps`; `many` for irregular plurals (`1 process`, `2 processes`)."""
    return f"{count} {word if count == 1 else many or word + 's'}"
