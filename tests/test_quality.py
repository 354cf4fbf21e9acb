"""The degenerate-output rule: loops, cut-off text and empty answers are caught; normal answers are not."""

from __future__ import annotations

import math

import pytest

from longread.quality import degeneracy, degenerate_rate, is_degenerate, repeated_ngram_share, tokens


def test_tokens_split_words_and_punctuation():
    assert tokens("A: b, C!") == ["a", ":", "b", ",", "c", "!"]


def test_repeated_share_by_hand():
    # 8 tokens -> 5 four-grams: (a b c d) (b c d a) (c d a b) (d a b c) (a b c d): one repeat of five.
    assert repeated_ngram_share("a b c d a b c d") == pytest.approx(1 / 5)
    assert repeated_ngram_share("a b c") == 0.0
    assert repeated_ngram_share("one two three four five six") == 0.0


@pytest.mark.parametrize(
    "text",
    [
        "a 7-year-old girl who is a 7-year-old girl who is a 7-year-old girl who is a 7-year-old girl.",
        "A: A: A: A: A: A: A: A:",
        "10:10:10:10:10:10:10:10:10:10",
        "<<<<<<<<<<<< HEADER",
        "and Ross, and Ross, and Ross, and Ross, and Ross, and Ross.",
    ],
)
def test_loops_are_repetition(text):
    assert "repetition" in degeneracy(text)


def test_cut_off_and_empty():
    assert degeneracy("The captain flies the ship to Venus and") == ("unfinished",)
    assert degeneracy("") == ("empty",)
    assert degeneracy("  ...  ") == ("empty",)


@pytest.mark.parametrize(
    "text",
    [
        "Retief diverts the luggage full of weapons and sends the students to help with the harvest.",
        'She said "go home!"',
        "The Bogans are a warlike people (from Boge).",
        "It ends well…",
    ],
)
def test_normal_answers_pass(text):
    assert degeneracy(text) == ()
    assert not is_degenerate(text)


def test_a_real_summary_with_some_repeated_phrases_passes():
    text = (
        "The story follows Strike, the commander of the Aphrodite. The crew of the Aphrodite is small. "
        "The engineer of the Aphrodite fixes the engine, and the ship of the Space Navy saves the day."
    )
    assert repeated_ngram_share(text) < 0.2
    assert not is_degenerate(text)


def test_rate():
    assert degenerate_rate(["Fine.", "cut off", "", "Also fine."]) == 0.5
    assert math.isnan(degenerate_rate([]))
