"""Spoken-text clean-up: strip the markdown and emoji an LLM reply carries before it is read aloud.

Pure functions, no state. ``clean_text`` keeps the words and the punctuation that shapes prosody
(``, . ; : ! ? —``) and removes what would otherwise be read out ("asterisk") or mispronounced.
"""

from __future__ import annotations

import re
import unicodedata

_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_CODE = re.compile(r"`+")
_HEADING = re.compile(r"(?m)^\s{0,3}#{1,6}\s*")
_HASH_RUN = re.compile(r"(?<!\S)#+(?=\s|$)")
_QUOTE = re.compile(r"(?m)^\s*>+\s?")
_BULLET = re.compile(r"(?m)^\s*[-*+•‣◦▪]\s+")
_NUMBERED = re.compile(r"(?m)^\s*(\d{1,3})[.)]\s+(?=\S)")
_RULE = re.compile(r"(?m)^\s*([-*_=])\1{2,}\s*$")
_STARS = re.compile(r"\*+")
_UNDERSCORES = re.compile(r"_{2,}|(?<!\w)_|_(?!\w)")
_TILDES = re.compile(r"~~")
_WS = re.compile(r"\s+")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.;:!?…])")
_SPEAKABLE = re.compile(r"[^\W_]")

_KEEP_SYMBOLS = frozenset("°©®™§¶")
_JOINERS = frozenset("\u200d\ufe0e\ufe0f\u20e3")


def _is_emoji(ch: str) -> bool:
    """True for pictographs, dingbats, emoji modifiers and joiners (not letters, digits or punctuation)."""
    if ch in _JOINERS:
        return True
    if ch in _KEEP_SYMBOLS:
        return False
    cat = unicodedata.category(ch)
    if cat in ("So", "Cs", "Co", "Cn"):
        return True
    cp = ord(ch)
    return 0x1F3FB <= cp <= 0x1F3FF or 0xE0020 <= cp <= 0xE007F  # skin tones, tag sequences


def strip_emoji(text: str) -> str:
    """``text`` without emoji and other pictographic symbols."""
    return "".join(" " if _is_emoji(ch) else ch for ch in text)


def clean_text(text: str) -> str:
    """Markdown-ish ``text`` as plain speakable text on one line ("" when nothing is left to say).

    Links keep their label, headings/bullets/quotes/rules lose their markers, emphasis markers
    (``*``, ``_``, ``~~``, backticks) and emoji go, numbered-list markers become "1, ".
    """
    text = _IMAGE.sub(r"\1", text)
    text = _LINK.sub(r"\1", text)
    text = _RULE.sub(" ", text)
    text = _HEADING.sub("", text)
    text = _QUOTE.sub("", text)
    text = _BULLET.sub("", text)
    text = _NUMBERED.sub(r"\1, ", text)
    text = _CODE.sub("", text)
    text = _STARS.sub("", text)
    text = _UNDERSCORES.sub(" ", text)
    text = _TILDES.sub("", text)
    text = _HASH_RUN.sub(" ", text)
    text = strip_emoji(text)
    text = _WS.sub(" ", text).strip()
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    return text


def is_speakable(text: str) -> bool:
    """True when ``text`` holds at least one letter or digit."""
    return bool(_SPEAKABLE.search(text))
