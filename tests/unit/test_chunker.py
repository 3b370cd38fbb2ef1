"""SentenceChunker: streaming model text -> pieces worth one text-to-speech call each."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parley.runtime.chunker import SentenceChunker


def stream(text: str, cuts: list[int] | None = None, **kw: int) -> list[str]:
    """Push `text` in pieces split at `cuts` (char by char when None), then flush."""
    c = SentenceChunker(**kw)
    if cuts is None:
        deltas = list(text)
    else:
        bounds = [0, *sorted(set(x for x in cuts if 0 < x < len(text))), len(text)]
        deltas = [text[a:b] for a, b in zip(bounds, bounds[1:])]
    out: list[str] = []
    for d in deltas:
        out += c.push(d)
    return out + c.flush()


def squash(s: str) -> str:
    return "".join(ch for ch in s if not ch.isspace())


def test_a_sentence_is_released_as_soon_as_it_ends() -> None:
    c = SentenceChunker()
    assert c.push("Hello there") == []
    assert c.push(".") == []  # could still be "there.com": wait for the next character
    assert c.push(" How") == ["Hello there."]
    assert c.push(" are you?\nI am") == ["How are you?"]
    assert c.push(" fine") == []
    assert c.flush() == ["I am fine"]
    assert c.flush() == []


@pytest.mark.parametrize("text, first", [
    ("Really?! Yes. ", "Really?!"),
    ('He said "stop." Then ', 'He said "stop."'),
    ("Wait… what ", "Wait…"),
    ("Line one\nline two", "Line one"),
    ("(An aside.) Next ", "(An aside.)"),
])
def test_sentence_endings(text: str, first: str) -> None:
    assert SentenceChunker().push(text)[0] == first


def test_decimals_are_not_sentence_ends() -> None:
    c = SentenceChunker()
    assert c.push("Pi is 3.14 and e is 2.71") == []
    assert c.flush() == ["Pi is 3.14 and e is 2.71"]


def test_the_first_clause_is_released_early_at_a_comma() -> None:
    c = SentenceChunker()
    assert c.push("Well, ") == []  # too short to be worth a TTS call
    assert c.push("I think that is right, but") == ["Well, I think that is right,"]
    # later clauses need to be longer (80 characters) before a comma releases them
    assert c.push(" maybe, just maybe, we could") == []
    assert c.push(" go somewhere else entirely for the whole afternoon; or not") == [
        "but maybe, just maybe, we could go somewhere else entirely for the whole afternoon;"]
    assert c.flush() == ["or not"]


def test_clause_thresholds_are_settable() -> None:
    c = SentenceChunker(first_clause_chars=5, clause_chars=10)
    assert c.push("Well, yes, I mean, sure ") == ["Well,", "yes, I mean,"]


def test_long_text_without_punctuation_is_split_at_a_space() -> None:
    words = " ".join(f"word{i}" for i in range(80))  # ~550 characters, no punctuation
    c = SentenceChunker()
    pieces = c.push(words)
    assert pieces and all(len(p) <= 240 for p in pieces)
    assert all(not p.startswith(" ") and not p.endswith(" ") for p in pieces)
    rest = c.flush()
    assert " ".join(pieces + rest) == words  # split between words, never inside one


def test_a_long_word_is_cut_at_the_limit() -> None:
    pieces = stream("x" * 500, [500], max_chars=100)
    assert [len(p) for p in pieces] == [100, 100, 100, 100, 100]


def test_flush_returns_the_rest_and_nothing_when_empty() -> None:
    c = SentenceChunker()
    assert c.flush() == []
    assert c.push("   \n  ") == []
    assert c.flush() == []
    c.push("no end in sight")
    assert c.flush() == ["no end in sight"]


_ALPHABET = st.sampled_from(list("abc xyz,.;:!?\n\"')—…") + ["  ", "word ", ". ", ", "])
texts = st.lists(_ALPHABET | st.characters(), max_size=300).map("".join)


@settings(max_examples=200, deadline=None)
@given(text=texts, cuts=st.lists(st.integers(0, 300), max_size=40))
def test_pieces_are_never_empty_and_lose_nothing(text: str, cuts: list[int]) -> None:
    pieces = stream(text, cuts)
    assert all(p and p == p.strip() for p in pieces)
    assert squash("".join(pieces)) == squash(text)


@settings(max_examples=100, deadline=None)
@given(text=texts)
def test_streamed_pieces_respect_the_length_limit(text: str) -> None:
    pieces = stream(text, None, max_chars=60)
    assert all(len(p) <= 60 for p in pieces)
    assert squash("".join(pieces)) == squash(text)


def test_many_blank_lines_in_one_push() -> None:
    assert SentenceChunker().push(" \n" * 3000 + "Hi. ") == ["Hi."]


@pytest.mark.parametrize("text", [
    "word " * 100 + "end. And more",  # one long sentence: streamed it is cut at max_chars
    "Well, I think that is right, but maybe not. Yes",  # streamed, the first clause goes early
])
def test_pieces_do_not_depend_on_delta_boundaries(text: str) -> None:
    assert stream(text, []) == stream(text, None)
