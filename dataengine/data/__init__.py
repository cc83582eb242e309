"""Packaged word lists: non-visual nouns to drop and known compound nouns to keep whole."""

from importlib.resources import files


def read_word_list(name: str) -> list[str]:
    """One entry per line; blank lines and lines starting with # are ignored."""
    text = (files(__package__) / name).read_text(encoding="utf-8")
    return [line.strip().lower() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
