"""The degenerate-output rule: loops, cut-off text and empty answers are caught; normal answers are not."""

from __future__ import annotations

import json
import math
from typing import Any

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


def test_cjk_loops_and_cut_off_sentences_are_caught():
    from longread.generation import cut_to_sentence

    assert degeneracy("我爱你" * 40 + "。") == ("repetition",)  # no spaces: characters are the tokens
    assert tokens("abc中文 Def!") == ["abc", "中", "文", "def", "!"]
    assert degeneracy("他走进了房间。然后他") == ("unfinished",)
    assert cut_to_sentence("他走进了房间。然后他") == "他走进了房间。"


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
        "他走进了房间。然后他坐下了。",  # CJK sentence ends, no spaces
        "彼は言った「行こう」。",
        "वह घर गया।",
        "Il a dit «oui.»",
        "A **bold ending.**",
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


def row(stream: str, kind: str, index: int, text: str | None, stop: str | None = "eos", **extra: Any) -> dict:
    """One output row of a job (the columns experiments.degenerate reads, plus the required ones)."""
    from datetime import UTC, datetime

    return {
        "job_id": "j",
        "stream_id": stream,
        "source_uri": stream,
        "task": "summarize",
        "row_kind": kind,
        "segment_index": index,
        "part_index": 0,
        "part_count": 1,
        "model": "m",
        "policy": "lacache",
        "policy_params": "{}",
        "stride": 16,
        "output_text": text,
        "stop_reason": stop,
        "created_at": datetime.now(UTC),
        **extra,
    }


def test_degenerate_command_on_a_job_output(tmp_path, capsys):
    """experiments.degenerate reads a job's Parquet folder and counts with the same rule, per row kind."""
    from helpers_pipeline import write_stream

    from experiments.degenerate import main
    from pipeline.output.writer import PartWriter

    out = tmp_path / "out"
    writer = PartWriter(str(out))
    writer.prepare()
    write_stream(
        writer, "a", [row("a", "segment", 0, "A fine summary."), row("a", "segment", 1, "and then the")]
    )
    write_stream(writer, "a2", [row("a2", "final", 2, "A: A: A: A: A: A: A: A:", "max_new_tokens")])
    write_stream(writer, "b", [row("b", "segment", 0, "Also fine."), row("b", "final", 1, "")])
    write_stream(writer, "c", [{**row("c", "error", 0, None, None), "error_kind": "empty", "error": "empty"}])
    report = tmp_path / "d.json"
    assert main([str(out), "--examples", "5", "--json", str(report)]) == 0
    printed = capsys.readouterr().out
    table = {t["kind"]: t for t in json.loads(report.read_text())["table"]}
    assert table["segment"]["rows"] == 3 and table["segment"]["degenerate"] == pytest.approx(1 / 3)
    assert table["final"]["degenerate"] == 1.0 and table["final"]["empty"] == 0.5
    assert table["all"]["rows"] == 5 and table["all"]["degenerate"] == pytest.approx(3 / 5)
    assert table["all"]["error_rows"] == 1 and table["all"]["stop_reasons"] == {"eos": 4, "max_new_tokens": 1}
    assert "and then the" in printed and "['unfinished']" in printed
    assert main([str(tmp_path / "nothing")]) == 2
    # A folder of error rows only: said so (exit 1), the JSON strict (no NaN).
    only = tmp_path / "only-errors"
    errors = PartWriter(str(only))
    errors.prepare()
    write_stream(errors, "c", [{**row("c", "error", 0, None, None), "error_kind": "empty", "error": "empty"}])
    assert main([str(only), "--json", str(report)]) == 1
    assert "has no generated text to score (1 error rows)" in capsys.readouterr().out
    assert json.loads(report.read_text(), parse_constant=pytest.fail)["table"][0]["degenerate"] is None


def test_degenerate_command_scores_answers_against_their_references(tmp_path, capsys):
    """--references: ROUGE of each answer against its own story's references (record index + question)."""
    from helpers_pipeline import write_stream

    from experiments.degenerate import main
    from experiments.evaluate import Scorer
    from pipeline.output.writer import PartWriter

    refs = [["The crew repairs the ship and escapes."], ["A robot guards the gate.", "The gate has a guard."]]
    stories = tmp_path / "stories.jsonl"
    stories.write_text(
        "\ufeff"  # a BOM, as the pipeline's reader allows
        + "\n\n".join(
            json.dumps(
                {
                    "document": f"story {i}",
                    "questions": [
                        {"question_text": "What happens?", "responses": [{"response_text": t} for t in texts]}
                    ],
                }
            )
            for i, texts in enumerate(refs)
        )
        + "\n"
    )
    answers = ["The crew repairs the ship.", "A robot guards it."]
    out = tmp_path / "out"
    writer = PartWriter(str(out))
    writer.prepare()
    for i, text in enumerate(answers):
        stream = f"{stories}#record={i}"
        write_stream(
            writer, stream, [row(stream, "answer", 0, text, record_id=str(i), question="What happens?")]
        )
    report = tmp_path / "d.json"
    assert main([str(out), "--references", str(stories), "--json", str(report)]) == 0
    table = {t["kind"]: t for t in json.loads(report.read_text())["table"]}
    scorer = Scorer()
    expected = [scorer.score(text, r)["rougeL"] for text, r in zip(answers, refs)]
    assert table["answer"]["rougeL"] == pytest.approx(sum(expected) / 2)
    assert expected[1] == pytest.approx(scorer.score(answers[1], refs[1][:1])["rougeL"])  # its best reference
    assert "ROUGE-1/2/L" in capsys.readouterr().out
    # An answer whose question is not in the file is an error, never a silent zero.
    stream = f"{stories}#record=1"
    write_stream(writer, stream, [row(stream, "answer", 0, "x", record_id="1", question="Who?")])
    assert main([str(out), "--references", str(stories)]) == 2
    assert "no references" in capsys.readouterr().out
