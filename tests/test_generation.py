"""Decoding controls against transformers' own logits processors, and the stopping rules."""

from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import (
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
)

from longread.generation import Decoder, GenerationSettings, cut_to_sentence, ends_sentence


class Chars:
    """Token i <-> chr(32 + i)."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(32 + i) for i in ids)


def ids(text: str) -> list[int]:
    return [ord(c) - 32 for c in text]


@pytest.mark.parametrize("penalty", [1.3, 0.8])
def test_repetition_penalty_equals_transformers(penalty):
    torch.manual_seed(0)
    logits = torch.randn(3, 50)
    histories = [[1, 5, 5, 9], [], [49, 0, 7]]
    decoders = [Decoder(GenerationSettings(repetition_penalty=penalty), tokens=list(h)) for h in histories]
    got = logits.clone()
    Decoder.process(got, decoders)
    for row, history in enumerate(histories):
        expected = logits[row : row + 1].clone()
        if history:
            expected = RepetitionPenaltyLogitsProcessor(penalty)(torch.tensor([history]), expected)
        torch.testing.assert_close(got[row : row + 1], expected)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_no_repeat_ngram_equals_transformers(n):
    torch.manual_seed(1)
    history = torch.randint(0, 6, (40,)).tolist()
    logits = torch.randn(1, 6)
    got = logits.clone()
    Decoder.process(got, [Decoder(GenerationSettings(no_repeat_ngram_size=n), tokens=history)])
    expected = NoRepeatNGramLogitsProcessor(n)(torch.tensor([history]), logits.clone())
    assert torch.equal(torch.isinf(got), torch.isinf(expected))
    assert torch.isinf(got).any()


def test_rows_without_controls_are_untouched():
    logits = torch.randn(2, 10)
    got = logits.clone()
    Decoder.process(got, [Decoder(GenerationSettings(), tokens=[1, 2, 1, 2]), Decoder(GenerationSettings())])
    assert torch.equal(got, logits)


def drive(settings: GenerationSettings, text: str, eos: set[int] = frozenset()) -> Decoder:
    dec = Decoder(settings, Chars(), set(eos))
    for token in ids(text):
        if dec.push(token):
            break
    return dec


def test_stop_string_cuts_text():
    dec = drive(GenerationSettings(max_new_tokens=50, stop=("##",)), "hello ## world")
    assert dec.reason == "stop_string" and dec.text == "hello "


def test_eos_is_not_part_of_output():
    dec = drive(GenerationSettings(max_new_tokens=50), "ab~cd", eos={ord("~") - 32})
    assert dec.reason == "eos" and dec.tokens == ids("ab") and dec.text == "ab"


def test_max_new_tokens_without_finishing():
    dec = drive(GenerationSettings(max_new_tokens=5), "abcdefgh")
    assert dec.reason == "max_new_tokens" and dec.text == "abcde"


def test_finish_sentence_extends_to_the_sentence_end():
    dec = drive(GenerationSettings(max_new_tokens=5, finish_sentence=10), "One two three. Four")
    assert dec.reason == "sentence_end" and dec.text == "One two three."


def test_finish_sentence_trims_when_the_extension_runs_out():
    dec = drive(GenerationSettings(max_new_tokens=9, finish_sentence=4), "Go now. and then more and more")
    assert dec.reason == "trimmed" and dec.text == "Go now."
    assert len(dec.tokens) == 13


def test_finish_sentence_keeps_text_without_any_sentence_end():
    dec = drive(GenerationSettings(max_new_tokens=4, finish_sentence=2), "abcdefgh")
    assert dec.reason == "max_new_tokens" and dec.text == "abcdef"


def test_sentence_helpers():
    assert ends_sentence('He said "no."') and ends_sentence("Done!  ") and not ends_sentence("e.g")
    assert cut_to_sentence("First. Second? third") == "First. Second?"
    assert cut_to_sentence("nothing here") is None


def test_settings_are_validated_with_the_field_named():
    with pytest.raises(ValueError, match="top_p"):
        GenerationSettings(top_p=0)
    with pytest.raises(ValueError, match="repetition_penalty"):
        GenerationSettings(repetition_penalty=0)


def test_sampling_depends_only_on_the_stream_seed():
    torch.manual_seed(2)
    logits = torch.randn(3, 30)
    settings = GenerationSettings(temperature=1.0, seed=7)
    alone = Decoder.choose(logits[1:2].clone(), [Decoder(settings)])
    batch = Decoder.choose(
        logits.clone(), [Decoder(GenerationSettings()), Decoder(settings), Decoder(settings)]
    )
    assert batch[1] == alone[0] and batch[0] == int(logits[0].argmax())
