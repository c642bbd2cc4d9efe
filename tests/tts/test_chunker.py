"""Clause chunker and spoken-text clean-up: token streams in, clauses out (pure logic)."""

from __future__ import annotations

import re

import pytest

from services.tts.chunker import ChunkerLimits, ClauseChunker
from services.tts.text import clean_text, is_speakable

REPLY = [
    "The",
    " capital",
    " of",
    " France",
    " is",
    " Paris",
    ".",
    " It",
    " is",
    " known",
    " for",
    " the",
    " Eiffel",
    " Tower",
    ",",
    " fine",
    " food",
    ",",
    " and",
    " art",
    ".",
]


def feed(pieces, limits=None):
    """(piece that completed it, clause) for each clause, then the flushed ones under '<flush>'."""
    chunker = ClauseChunker(limits)
    out = [(p, clause) for p in pieces for clause in chunker.push(p)]
    return out + [("<flush>", clause) for clause in chunker.flush()]


def test_llm_tokens_become_clauses_as_soon_as_they_end():
    assert feed(REPLY) == [
        (".", "The capital of France is Paris."),  # emitted with the "." token, not one token later
        (",", "It is known for the Eiffel Tower,"),  # a later clause needs >= 4 words before a comma
        (".", "fine food, and art."),
    ]


def test_first_clause_is_cut_at_the_word_cap():
    words = [f" w{i}" for i in range(30)]
    out = feed(words, ChunkerLimits(first_max_words=12, max_clause_words=10))
    clauses = [c for _, c in out]
    assert clauses[0].split() == [f"w{i}" for i in range(12)]
    assert out[0][0] == " w12"  # the 12th word is known complete when the next one starts
    assert clauses[1].split() == [f"w{i}" for i in range(12, 22)]
    assert " ".join(clauses).split() == [f"w{i}" for i in range(30)]


def test_first_clause_takes_any_clause_punctuation():
    assert feed(["Well", ",", " I", " think", " so", "."]) == [(",", "Well,"), (".", "I think so.")]


@pytest.mark.parametrize(
    "text",
    [
        "Dr. Smith met Mr. Jones and Mrs. Brown.",
        "We use many tools e.g. hammers and saws.",
        "He moved to the U.S. last year.",
        "The book by J. K. Rowling sold well.",
        "It costs 3.5 dollars or 1,000 yen today.",
        "She said no etc. and left.",
        "Acme Inc. and Foo Ltd. merged.",
    ],
)
def test_abbreviations_numbers_and_initials_do_not_split(text):
    tokens = re.findall(r"\s*\S", text)  # one character per piece: the hardest streaming case
    assert [c for _, c in feed(tokens)] == [text]


def test_sentence_ends_split_even_in_one_piece():
    out = feed(["Hi there! How are you? I am fine… Thanks. Bye"])
    assert [c for _, c in out] == ["Hi there!", "How are you?", "I am fine…", "Thanks.", "Bye"]


def test_ambiguous_abbreviation_waits_for_the_next_word():
    chunker = ClauseChunker()
    assert chunker.push("We sold apples, pears, etc.") == ["We sold apples,"]
    assert chunker.push(" ") == []
    assert chunker.push("Then") == ["pears, etc."]
    assert chunker.flush() == ["Then"]


def test_line_breaks_and_markdown():
    pieces = ["**Sure!** Here", " are", " two", " options", ":\n", "1", ".", " **Paris**", " 😀\n", "2. Lyon", "."]
    assert [c for _, c in feed(pieces)] == ["Sure!", "Here are two options:", "1, Paris", "2, Lyon."]


def test_whitespace_and_unspeakable_pieces_are_harmless():
    assert feed(["", "  ", "\n", "😀", "**"]) == []
    assert feed([" ", "Hello", " ", "world", "   "]) == [("<flush>", "Hello world")]


def test_long_unbroken_text_is_capped_by_characters():
    out = [c for _, c in feed(["x" * 1000], ChunkerLimits(max_clause_chars=300))]
    assert [len(c) for c in out] == [300, 300, 300, 100]


def test_clean_text():
    assert clean_text("# Title\n> quote with **bold** and _it_ and `code`") == "Title quote with bold and it and code"
    assert clean_text("See [the docs](http://x.y/z) ![img](a.png) now 🎉👍🏽!") == "See the docs img now!"
    assert clean_text("- item one\n* item two\n---\n3) three") == "item one item two 3, three"
    assert clean_text("It is 25°C and #1 ~~old~~ snake_case in C# ##") == "It is 25°C and #1 old snake_case in C#"
    assert not is_speakable(clean_text("** 😀 —"))
