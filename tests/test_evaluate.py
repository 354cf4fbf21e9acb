"""longread-eval: data, settings, scoring, the stream program, and a whole run on a tiny model."""

from __future__ import annotations

import json
import math

import pytest
import torch

from actors.tasks.qa import QASettings
from cache_policies import make_policy
from experiments.eval_table import format_table, summarize
from experiments.evaluate import (
    BUDGET_ALIGN,
    EvalConfig,
    Scorer,
    budget_tokens,
    evaluate,
    load_stories,
    parse_args,
    parse_policies,
    parse_prompt,
    parse_variant,
    payload,
    question_prompt,
    story_program,
)
from longread.engine import StreamingEngine
from longread.scheduler import run_program
from longread.text import drop_repeated_sentences


class CharTokenizer:
    """Test double: token i <-> chr(32 + i); no EOS, so answers run to their token limit."""

    eos_token_id = None
    chat_template = None

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [max(0, min(ord(c) - 32, 95)) for c in text]}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(32 + i) for i in ids)


def record(i: int, questions: int = 2) -> dict:
    return {
        "metadata": {"passage_id": f"p{i}"},
        "document": f"Story {i}. " + "The ship flew to Venus and back. " * 8,
        "questions": [
            {
                "question_text": f"What happens in part {q}?",
                "responses": [
                    {"response_text": "The ship flies to Venus."},
                    {"response_text": "It returns."},
                ],
            }
            for q in range(questions)
        ],
    }


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "stories.jsonl"
    lines = [json.dumps(record(0)), "not json", json.dumps({"document": "x"}), "", json.dumps(record(1))]
    lines.append(json.dumps({"document": "y", "questions": [{"question_text": "q?", "responses": []}]}))
    lines.append(json.dumps(record(2, questions=3)))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_load_stories_skips_bad_lines_with_reasons(data):
    stories, errors = load_stories(data)
    assert [s.id for s in stories] == ["p0", "p1", "p2"]
    assert [len(s.questions) for s in stories] == [2, 2, 3]
    assert stories[0].questions[0].references == ["The ship flies to Venus.", "It returns."]
    assert [e["where"] for e in errors] == ["stories.jsonl:2", "stories.jsonl:3", "stories.jsonl:6"]
    assert "not valid JSON" in errors[0]["error"]
    assert "'questions'" in errors[1]["error"]
    assert "response_text" in errors[2]["error"]
    stories, _ = load_stories(data, max_stories=1, max_questions=1, skip=1)
    assert [s.id for s in stories] == ["p1"] and len(stories[0].questions) == 1


def test_missing_file_says_what_to_pass(tmp_path):
    with pytest.raises(FileNotFoundError, match="--data"):
        load_stories(tmp_path / "nope.jsonl")


def test_variants_and_prompts():
    v = parse_variant("after:max_new_tokens=96,repetition_penalty=1.2,no_repeat_ngram_size=3,clean=false")
    assert v.name == "after" and not v.clean
    assert v.settings.max_new_tokens == 96 and v.settings.repetition_penalty == 1.2
    assert "<|im_end|>" in v.settings.stop  # the pipeline's stop strings always apply
    # Presets: "pipeline" is the QA task's settings, "before" those up to e4e184a; key=value overrides them.
    qa = QASettings()
    pipeline = parse_variant("pipeline")
    assert pipeline.settings == qa.generation.apply(pipeline.settings)
    assert pipeline.settings.max_new_tokens == 128
    assert pipeline.instruction("Who?") == qa.prompt.format(question="Who?")
    assert parse_variant("pipeline:max_new_tokens=32").settings.no_repeat_ngram_size == 4
    before = parse_variant("before")
    assert (before.settings.max_new_tokens, before.settings.no_repeat_ngram_size, before.prompt_name) == (
        64,
        0,
        "qa",
    )
    assert parse_variant("other").settings == before.settings
    with pytest.raises(ValueError, match="unknown setting"):
        parse_variant("x:temprature=1")
    with pytest.raises(ValueError, match="unknown prompt 'brief'"):
        parse_variant("x:prompt=brief")
    name, template = parse_prompt("brief={question}\\nAnswer in detail.")
    assert name == "brief" and template == "{question}\nAnswer in detail."
    assert (
        parse_variant("x:prompt=brief", {"brief": template}).instruction("Who?") == "Who?\nAnswer in detail."
    )
    with pytest.raises(ValueError, match="must contain"):
        parse_prompt("bad=no placeholder")
    with pytest.raises(ValueError, match="bad generation settings"):
        parse_variant("x:repetition_penalty=0")


def test_policy_runs_and_aligned_budgets():
    runs = parse_policies(["streaming_llm", "cascading:cascades=4"], [0.25, 0.5], full=True)
    assert [(r.name, r.fraction) for r in runs] == [
        ("full", None),
        ("streaming_llm", 0.25),
        ("streaming_llm", 0.5),
        ("cascading", 0.25),
        ("cascading", 0.5),
    ]
    with pytest.raises(ValueError, match="--budget"):
        parse_policies(["lacache:budget=512"], [0.25], full=False)
    with pytest.raises(ValueError, match="unknown policy"):
        parse_policies(["lacash"], [0.25], full=False)
    for tokens in (500, 5752, 11070):
        for frac in (0.25, 0.5):
            budget = budget_tokens(frac, tokens, sink=4)
            assert (budget - 4) % BUDGET_ALIGN == 0
            assert frac * tokens - BUDGET_ALIGN < budget <= frac * tokens
            for cascades in (1, 2, 4, 8, 16):  # every policy accepts the same budget
                make_policy("cascading", budget=budget, sink=4, cascades=cascades)


def test_parse_args_defaults_and_errors(capsys):
    cfg, verbose = parse_args(["--budget", "0.25", "--out", "r/x.json"])
    assert cfg.budgets == [0.25] and str(cfg.plot) == "r/x.png" and not verbose
    with pytest.raises(SystemExit):
        parse_args(["--budget", "25"])
    assert "fractions" in capsys.readouterr().err
    cfg, _ = parse_args(["--full-only"])
    assert cfg.policies == [] and cfg.full
    assert [r.name for r in parse_policies(cfg.policies, cfg.budgets, cfg.full)] == ["full"]
    with pytest.raises(SystemExit):
        parse_args(["--full-only", "--no-full"])


def test_rouge_is_the_best_reference_per_metric():
    scorer = Scorer()
    refs = ["the ship flies to venus", "a completely different answer about cats"]
    assert scorer.score("The ship flies to Venus.", refs) == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
    both = scorer.score("the ship flies to venus about cats", refs)
    single = [scorer.score("the ship flies to venus about cats", [r]) for r in refs]
    for metric, value in both.items():
        assert value == max(s[metric] for s in single)
    assert scorer.score("", refs)["rougeL"] == 0.0


def test_every_answer_equals_a_fresh_stream_answering_alone(tiny_llama):
    """AskMany answers from a snapshot: each equals streaming context + that prompt alone and generating."""
    tok = CharTokenizer()
    variant = parse_variant("v:max_new_tokens=6,no_repeat_ngram_size=2,clean=false")
    context = tok("A long story about ships. " * 6)["input_ids"]
    prompts = [question_prompt(f"Question {i}?", "\n\nAnswer:") for i in range(3)]
    engine = StreamingEngine(tiny_llama, make_policy("lacache", budget=120, span=2), stride=16, tokenizer=tok)
    state, answers = run_program(engine, story_program(context, {"v": prompts}, [variant]))
    assert state.tokens_seen == len(context) and state.cache_tokens <= 120
    for prompt, got in zip(prompts, answers["v"], strict=True):
        fresh = StreamingEngine(
            tiny_llama, make_policy("lacache", budget=120, span=2), stride=16, tokenizer=tok
        )
        fresh.feed(context)
        want = fresh.generate(prompt, settings=variant.settings)
        assert got.token_ids == want.token_ids and len(got.token_ids) == 6


def test_whole_run_on_a_tiny_model(tiny_llama, data, tmp_path):
    torch.manual_seed(0)
    stories, errors = load_stories(data, max_stories=2)
    cfg = EvalConfig(
        data=data,
        policies=["streaming_llm", "cascading:cascades=2"],
        budgets=[0.25, 0.5],
        stride=32,
        variants=[
            "a:max_new_tokens=4",
            "b:max_new_tokens=6,repetition_penalty=1.3",
            "a_raw:max_new_tokens=4,clean=false",
        ],
        chat=False,
        progress=False,
    )
    rows, runs = evaluate(cfg, tiny_llama, CharTokenizer(), stories)
    assert len(runs) == 2 * 5  # stories x (full + 2 policies x 2 budgets)
    assert len(rows) == len(runs) * 3 * 2  # x variants x questions
    for run in runs:
        if run["fraction"] is None:
            assert run["kept_fraction"] == 1.0
        else:  # the cache ends within budget: the story plus the question is more than the budget
            assert run["kept_fraction"] * run["context_tokens"] <= run["budget"] + cfg.stride
    assert {r["new_tokens"] for r in rows if r["variant"] == "a"} == {4}
    # a and a_raw differ only in post-processing: one generation serves both.
    raw = [r["answer"] for r in rows if r["variant"] == "a_raw"]
    assert [r["answer"] for r in rows if r["variant"] == "a"] == [
        drop_repeated_sentences(t.strip()) for t in raw
    ]
    summary = summarize(rows, runs)
    assert len(summary) == 5 * 3
    for s in summary:
        assert s["n"] == 4 and s["stories"] == 2
        assert 0 <= s["rougeL"] <= 1 and 0 <= s["degenerate"] <= 1
        assert s["degenerate"] >= max(s["unfinished"], s["repetition"], s["empty"])
    table = format_table(summary)
    assert "full" in table and "cascading:cascades=2" in table and "25%" in table
    out = payload(cfg, rows, runs, errors)
    assert (
        json.loads(json.dumps(out, default=str))["config"]["variant_settings"][1]["repetition_penalty"] == 1.3
    )

    from experiments.plots import merge_eval, plot_eval

    png = tmp_path / "eval.png"
    plot_eval(summary, png, title="tiny")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Merging with a second file that answered only story p1 restricts every row to p1.
    other_rows = [{**r, "system": "peer"} for r in rows if r["story"] == "p1" and r["policy"] == "full"]
    other_runs = [{**r, "system": "peer"} for r in runs if r["story"] == "p1" and r["policy"] == "full"]
    merged = merge_eval([out, {"rows": other_rows, "runs": other_runs}], variants=["a"])
    assert {(m["system"], m["n"], m["stories"]) for m in merged} == {("longread", 2, 1), ("peer", 2, 1)}
    peer = next(m for m in merged if m["system"] == "peer")
    mine = next(m for m in merged if m["system"] == "longread" and m["policy"] == "full")
    assert peer["rougeL"] == mine["rougeL"]


def test_ppl_curve_windows_recombine_to_the_overall_perplexity(tiny_llama, tmp_path):
    from experiments.plots import plot_ppl_curve
    from experiments.stream_ppl import StreamPPLConfig, run_one

    ids = torch.randint(0, 97, (150,), generator=torch.Generator().manual_seed(1))
    cfg = StreamPPLConfig(tokens=150, curve=32, checkpoints=[])
    row = run_one(tiny_llama, ids, "streaming_llm", 40, 16, cfg)
    ppl = row["curve"]["ppl"]
    sizes = [32, 32, 32, 32, 21]  # 149 predictions in windows of 32
    assert len(ppl) == len(sizes)
    overall = sum(n * math.log(p) for n, p in zip(sizes, ppl, strict=True)) / sum(sizes)
    assert overall == pytest.approx(math.log(row["ppl"]), rel=1e-6)
    png = tmp_path / "ppl.png"
    plot_ppl_curve([row], png)
    assert png.stat().st_size > 1000


def test_passkey_heatmap(tmp_path):
    from experiments.plots import plot_passkey

    rows = [
        {"spec": spec, "multiple": m, "length": 256 * m, "depth_bin": d, "exact": (d + m + i) % 2 == 0}
        for spec in ("full(budget=None)", "lacache(budget=256,sink=4,span=15,overlap=0)")
        for m in (2, 4)
        for d in range(3)
        for i in range(2)
    ]
    png = tmp_path / "passkey.png"
    plot_passkey(rows, png)
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_throughput_plot_from_bench_pipeline_rows(tmp_path):
    from experiments.plots import main as plots_main
    from experiments.plots import plot_throughput

    rows = [
        {
            "actors": a,
            "streams_per_actor": s,
            "tokens_per_s": 90.0 * s**0.5 * a,
            "generations": 12,
            "wall_s": 60 / s,
        }
        for a in (1, 2)
        for s in (1, 2, 4)
    ]
    data = tmp_path / "pipeline.json"
    data.write_text(json.dumps(rows))
    png = tmp_path / "throughput.png"
    assert plots_main(["throughput", str(data), "--out", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="bench_pipeline"):
        plot_throughput([{"x": 1}], png)


def test_a_policy_that_cannot_run_on_a_story_is_an_error_not_a_crash(tiny_llama, data):
    stories, _ = load_stories(data, max_stories=1)
    cfg = EvalConfig(
        policies=["cascading:cascades=32", "streaming_llm"],
        budgets=[0.05],  # 5% of a ~280-token story: 16 slots, too few for 32 cascades
        full=False,
        stride=32,
        variants=["a:max_new_tokens=2"],
        chat=False,
        progress=False,
    )
    errors: list = []
    rows, runs = evaluate(cfg, tiny_llama, CharTokenizer(), stories, errors=errors)
    assert [r["policy"] for r in runs] == ["streaming_llm"] and len(rows) == 2
    assert len(errors) == 1 and "cascades=32" in errors[0]["error"] and "a slot each" in errors[0]["error"]


def test_answers_in_parallel_rows_equal_answers_one_after_another(tiny_llama, data):
    """The default runs a story's questions in cache rows of their own (batched decoding); the answers
    must be token for token those of answering them one after another in the stream's single row."""
    stories, _ = load_stories(data, max_stories=1, skip=2)  # p2: three questions
    base = {
        "policies": ["lacache:span=2,overlap=0", "cascading:cascades=2"],
        "budgets": [0.5],
        "stride": 32,
        "variants": ["a:max_new_tokens=5,repetition_penalty=1.2,no_repeat_ngram_size=2"],
        "chat": False,
        "progress": False,
    }
    parallel, _ = evaluate(EvalConfig(**base), tiny_llama, CharTokenizer(), stories)
    sequential, _ = evaluate(EvalConfig(**base, parallel=False), tiny_llama, CharTokenizer(), stories)
    assert len(parallel) == 3 * 3
    assert [r["answer"] for r in parallel] == [r["answer"] for r in sequential]


def test_merged_rows_count_a_question_once_and_paired_differences():
    """Files that re-run a story count its answers once; paired differences to a baseline come with a
    story-bootstrap interval that covers the true difference."""
    from experiments.eval_table import paired
    from experiments.plots import merge_eval, merged_rows

    def row(system, policy, story, q, score):
        return {"system": system, "policy": policy, "fraction": 0.25, "variant": "v", "story": story,
                "question_index": q, "rougeL": score, "rouge1": score, "rouge2": score, "words": 10,
                "degenerate": []}  # fmt: skip

    rng = torch.Generator().manual_seed(0)
    base = [
        row("peer", "press", f"s{s}", q, float(torch.rand(1, generator=rng)))
        for s in range(8)
        for q in range(5)
    ]
    shift = [0.05 + 0.02 * (i % 2 - 0.5) for i in range(len(base))]  # mean 0.05 exactly
    mine = [{**r, "system": "longread", "policy": "lacache", "rougeL": r["rougeL"] + d}
            for r, d in zip(base, shift)]  # fmt: skip
    first = {"rows": base + mine[:20], "runs": []}
    again = {"rows": mine, "runs": []}  # re-runs the first four stories and adds four more
    rows = merged_rows([first, again])
    assert len(rows) == 80
    summary = {s["system"]: s for s in merge_eval([first, again])}
    assert summary["longread"]["n"] == summary["peer"]["n"] == 40
    [result] = paired(rows, "press")
    assert result["label"] == "longread lacache 25%" and result["n"] == 40 and result["stories"] == 8
    assert abs(result["mean_diff"] - 0.05) < 1e-9
    assert result["ci_low"] <= 0.05 <= result["ci_high"] and result["ci_high"] - result["ci_low"] < 0.02
    assert result["wins"] == 40
    # The resolution: a clear shift needs no more stories than it has; a story-level +-0.05 swing around a
    # 0.005 mean is below what 8 stories detect, and would take about (1.96 * 0.05 / 0.005)^2 = 384.
    assert result["stories_needed"] <= 8 and result["detectable"] < 0.05
    swing = [
        {**r, "system": "other", "policy": "cascading", "rougeL": r["rougeL"] + 0.005 + 0.05 * (-1) ** s}
        for s, r in ((int(r["story"][1:]), r) for r in base)
    ]
    noisy = next(c for c in paired(base + swing, "press") if c["label"].startswith("other"))
    assert noisy["ci_low"] < 0 < noisy["ci_high"] and noisy["detectable"] > 0.005
    assert 200 < noisy["stories_needed"] < 600
    with pytest.raises(ValueError, match="must match exactly one"):
        paired(rows, "25%")


def test_plots_eval_cli_paired_and_summary_json(tmp_path, capsys):
    from experiments.plots import main as plots_main

    def rows(system, policy, bonus):
        return [{"system": system, "policy": policy, "fraction": 0.25, "variant": "v", "story": f"s{s}",
                 "question_index": q, "rougeL": 0.1 * q + bonus, "rouge1": 0.2, "rouge2": 0.1, "words": 9,
                 "degenerate": []} for s in range(3) for q in range(2)]  # fmt: skip

    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"rows": rows("longread", "lacache", 0.01), "runs": []}))
    b.write_text(json.dumps({"rows": rows("kvpress", "KnormPress", 0.0), "runs": []}))
    out = tmp_path / "s.json"
    assert plots_main(["eval", str(a), str(b), "--paired", "Knorm", "--summary-json", str(out),
                       "--out", str(tmp_path / "p.png")]) == 0  # fmt: skip
    assert "vs kvpress KnormPress 25%" in capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert saved["files"] == ["a.json", "b.json"] and len(saved["summary"]) == 2
    [comparison] = saved["paired"]
    assert abs(comparison["mean_diff"] - 0.01) < 1e-9 and comparison["wins"] == 6
    assert (tmp_path / "p_paired.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plots_main(["eval", str(a), str(b), "--paired", "Knorm", "--paired-metric", "rouge2",
                       "--summary-json", str(out), "--out", str(tmp_path / "p.png")]) == 0  # fmt: skip
    assert "d rouge2" in capsys.readouterr().out
    assert json.loads(out.read_text())["paired"][0]["mean_diff"] == 0.0  # rouge2 is 0.1 in both files
    # --only: two systems over the stories both answered, though a third answered fewer
    c = tmp_path / "c.json"
    c.write_text(json.dumps({"rows": rows("longread", "full", 0.0)[:2], "runs": []}))
    only = ["--only", "lacache", "--only", "Knorm", "--paired", "Knorm", "--summary-json", str(out)]
    assert plots_main(["eval", str(a), str(b), str(c), *only, "--out", str(tmp_path / "p.png")]) == 0
    assert [p["stories"] for p in json.loads(out.read_text())["paired"]] == [3]
    with pytest.raises(SystemExit, match="must match exactly one"):
        plots_main(["eval", str(a), str(b), "--paired", "nothing", "--out", str(tmp_path / "p.png")])


def test_kvpress_ratio_keeps_exactly_the_budget():
    """kvpress keeps ``int(n * (1 - ratio))`` tokens (kvpress 0.5.5: utils.compute_n_kept and
    StreamingLLMPress); the benchmark's ratio must make that the budget longread keeps, for every length."""
    from benchmarks.bench_kvpress import press_ratio

    for n in range(64, 20_000, 7):
        for budget in {1, n // 4, n // 2, n - 1, n}:
            assert int(n * (1 - press_ratio(n, budget))) == budget, (n, budget)
    old = [int(n * (1 - (1 - (n // 4) / n))) != n // 4 for n in range(64, 20_000, 7)]  # 1 - budget / n
    assert sum(old) > 100  # the formula used before kept budget - 1 for these
