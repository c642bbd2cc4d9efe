"""Incremental text -> clause splitter for streamed LLM output (pure logic, no I/O).

Text arrives in arbitrary fragments (``"The"``, ``" capital"``, ``" of"`` ... ``"."``). The chunker
buffers it and emits a clause as soon as it can tell one has ended, so synthesis can start while the
LLM is still writing:

* **Sentence end** - a word ending in ``. ! ? …`` (closing quotes/brackets may follow) whose text
  holds a letter, unless it is a title or abbreviation ("Dr.", "e.g.", "U.S.", "J.") or the next
  word (when already buffered) starts in lower case. A word still being written is cut at once when
  it ends that way and holds a letter ("Paris." - it cannot become "3.14"); a bare number waits
  for the next character.
* **Line break** - a newline after a word ends the clause (lists, paragraphs).
* **Clause punctuation** - ``, ; :`` or a dash after a word, once the clause has ``min_clause_words``
  words (``first_min_words`` for the first clause, so "Well," is sent at once).
* **Word cap** - the first clause is cut at a word boundary after ``first_max_words`` words (~20 LLM
  tokens) even without punctuation, so first audio never waits for a long sentence; later clauses
  after ``max_clause_words``; any clause at ``max_clause_chars``.

Clauses come out cleaned for speech (:func:`services.tts.text.clean_text`); fragments with nothing
speakable ("**", an emoji, a list number) are folded into the next clause or dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from services.tts.text import clean_text, is_speakable

_WORD = re.compile(r"\S+(\s*)")
_CLOSERS = "\"'”’)]}»*_`"
_SENTENCE_END = frozenset(".!?…")
_CLAUSE_END = frozenset(",;:")
_DASHES = ("—", "–", "--")
_INITIALS = re.compile(r"^(?:[A-Za-z]\.)*[A-Za-z]$")
_HAS_LETTER = re.compile(r"[^\W\d_]")

ABBREVIATIONS = frozenset(
    """Adm Apr Apt Assn Atty Aug Ave Bldg Blvd Bros Capt Ch Cmdr Co Col Corp Cpl Dec Dept Dr Feb Fig Fr Fri
    Ft Gen Gov Govt Hon Hwy Inc Jan Jr Jul Jun Lt Ltd Ln Maj Mar Messrs Mon Mr Mrs Ms Msgr Mt Nov Oct Pkwy Pres
    Prof Rd Rep Rev Sat Sen Sep Sept Sgt St Ste Sun Supt Thu Thurs Tue Tues Univ Vol Wed approx cf ch ed eds
    est fig pp vol vs viz""".split()
)
"""Words that a period after them does not end a sentence (case-sensitive; single letters are initials)."""
AMBIGUOUS = frozenset("etc Inc Ltd Co Corp Jr Sr al".split())
"""Abbreviations that often end a sentence: decided by the case of the next word (wait until it shows)."""


@dataclass(frozen=True)
class ChunkerLimits:
    """Word and character caps (mirrors :class:`services.tts.config.ChunkerConfig`)."""

    first_max_words: int = 12
    first_min_words: int = 1
    min_clause_words: int = 4
    max_clause_words: int = 40
    max_clause_chars: int = 400


def _core(word: str) -> str:
    """``word`` without trailing closing quotes/brackets."""
    return word.rstrip(_CLOSERS)


def _stem(word: str) -> str:
    """``word`` without surrounding quotes/brackets and trailing periods."""
    return _core(word).lstrip("\"'“‘(").rstrip(".")


def _is_abbreviation(word: str) -> bool:
    """True when the period ending ``word`` belongs to a title, abbreviation or initial."""
    stem = _stem(word)
    return stem in ABBREVIATIONS or bool(_INITIALS.match(stem))


class ClauseChunker:
    """Feed text with :meth:`push`; it returns the clauses that are complete. :meth:`flush` ends the text."""

    def __init__(self, limits: ChunkerLimits | None = None) -> None:
        self.limits = limits or ChunkerLimits()
        self._buf = ""
        self._pending = ""  # cut text with nothing speakable yet: prefixed to the next clause
        self.clauses = 0

    @property
    def buffered(self) -> str:
        """Text received but not yet emitted."""
        return self._pending + self._buf

    def push(self, text: str) -> list[str]:
        """Add a fragment; return the clauses it completes (possibly none)."""
        self._buf += text
        return self._drain(final=False)

    def flush(self) -> list[str]:
        """End of text: return every remaining clause."""
        out = self._drain(final=True)
        rest, self._buf = self._buf, ""
        out += self._emit(rest)
        self._pending = ""
        return out

    # -- internals ------------------------------------------------------------------------------
    def _drain(self, final: bool) -> list[str]:
        out: list[str] = []
        while True:
            cut = self._find_cut(final)
            if cut is None:
                return out
            piece, self._buf = self._buf[:cut], self._buf[cut:]
            out += self._emit(piece)

    def _emit(self, piece: str) -> list[str]:
        text = clean_text(self._pending + piece)
        if not is_speakable(text):
            self._pending = "" if not text else self._pending + piece
            return []
        self._pending = ""
        self.clauses += 1
        return [text]

    def _find_cut(self, final: bool) -> int | None:
        """Index just past the end of the first complete clause in the buffer, or None."""
        lim = self.limits
        first = self.clauses == 0
        max_words = lim.first_max_words if first else lim.max_clause_words
        min_words = lim.first_min_words if first else lim.min_clause_words
        words = list(_WORD.finditer(self._buf))
        has_letter = bool(_HAS_LETTER.search(self._pending))
        for i, m in enumerate(words):
            word = m.group().rstrip()
            complete = bool(m.group(1)) or final
            has_letter = has_letter or bool(_HAS_LETTER.search(word))
            if m.end() > lim.max_clause_chars:
                if i > 0:
                    return m.start()
                return lim.max_clause_chars if len(self._buf) > lim.max_clause_chars else None
            if not has_letter:
                continue
            nxt = words[i + 1].group() if i + 1 < len(words) else ""
            if complete and "\n" in m.group(1):
                return m.end()
            if self._ends_sentence(word, complete, nxt, final):
                return m.end()
            if i + 1 >= min_words and self._ends_clause(word, complete):
                return m.end()
            if complete and i + 1 >= max_words:
                return m.end()
        return None

    @staticmethod
    def _ends_sentence(word: str, complete: bool, nxt: str, final: bool) -> bool:
        core = _core(word)
        if not core or core[-1] not in _SENTENCE_END:
            return False
        if not complete and not _HAS_LETTER.search(core):
            return False  # "3." may still become "3.14"
        initial = nxt.lstrip(_CLOSERS + "\"'“‘(")[:1]
        if core[-1] == "." and not core.endswith(".."):
            if _stem(word) in AMBIGUOUS:
                return initial.isupper() or (final and not nxt)  # "etc. and" vs "etc. The"
            if _is_abbreviation(word):
                return False
        return not initial.islower()

    @staticmethod
    def _ends_clause(word: str, complete: bool) -> bool:
        core = _core(word)
        if core in _DASHES or core.endswith(_DASHES):
            return complete or len(core) > 1
        if not core or core[-1] not in _CLAUSE_END:
            return False
        return complete or bool(_HAS_LETTER.search(core))  # "1," may still become "1,000"
