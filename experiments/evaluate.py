"""Output quality on SQuALITY-format data: ROUGE and degenerate-output rate per policy, budget and settings.

    longread-eval --data ../shared/data/squality/dev.jsonl --stories 6 --threads 1 \
        --policy streaming_llm --policy lacache:span=15,overlap=0 --policy cascading:cascades=4 \
        --budget 0.25 --budget 0.5 --variant before:max_new_tokens=64 --out results/eval.json

Contract:

* Input: JSONL, one story per line with ``document`` (its text) and ``questions``, a list of
  ``{question_text, responses: [{response_text}, ...]}`` (SQuALITY's fields; ``metadata.passage_id`` names
  the story when present). A line without them is reported in the JSON's ``errors`` and skipped.
* For each story and each policy x budget (``--budget``: fractions of the story's tokens; the full cache
  once, unless ``--no-full``), one stream program (``longread.scheduler``) streams the chat frame's prefix
  and the story, then answers every question from that state once per generation *variant*
  (``AskMany``: every answer starts from the same snapshot). Prompts are built as the pipeline builds them
  (``actors.context``): the instruction closes the user's message, the assistant's turn follows.
* Every answer is scored against all of its question's references (ROUGE-1/2/L F1 with stemming,
  ``rouge-score``, the best reference per metric) and checked with ``longread.quality.degeneracy``.
* Output: a table on stdout (one row per system, policy, budget and variant), JSON with the config, every
  answer, every run's memory and time, and the summary (rewritten after each story, so a long run keeps
  what it has), and a PNG of ROUGE-L against budget (``experiments.plots``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actors.tasks.qa import QASettings
from cache_policies import POLICIES, make_policy, parse_spec
from experiments.eval_table import METRICS, format_table, summarize
from longread.generation import GenerationResult, GenerationSettings
from longread.quality import degeneracy
from longread.scheduler import AskMany, Feed, Inspect, Program, StreamState
from longread.text import STOP_STRINGS, chat_frame, drop_repeated_sentences

log = logging.getLogger("experiments.evaluate")

DEFAULT_DATA = Path("../shared/data/squality/dev.jsonl")
DEFAULT_POLICIES = ["streaming_llm", "lacache:span=15,overlap=0", "cascading:cascades=4"]
DEFAULT_BUDGETS = [0.25, 0.5]
#: "qa" is the pipeline's QA prompt up to phase 1 of issue 11 (main at e4e184a); "paragraph" the one tuned on
#: SQuALITY dev (BENCHMARKS.md), the pipeline's ``qa.prompt`` since. --prompt NAME=TEMPLATE adds more.
PROMPTS: dict[str, str] = {
    "qa": "Answer the question about the text above in one or two sentences.\nQuestion: {question}",
    "paragraph": QASettings().prompt,
}
#: Budgets are rounded down so that budget - sink is a multiple of this, as for every result in BENCHMARKS.md
#: (cascading once needed budget - sink divisible by its number of cascades; it now takes any budget).
BUDGET_ALIGN = 16


# ----------------------------------------------------------------------------------------------- data
@dataclass
class Question:
    text: str
    references: list[str]


@dataclass
class Story:
    id: str
    text: str
    questions: list[Question]


def parse_story(record: Any, where: str) -> Story:
    """One JSONL record -> ``Story``; a ValueError names the line and the missing field."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object with 'document' and 'questions'")
    text = record.get("document")
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{where}: 'document' must hold the story's text (a non-empty string)")
    items = record.get("questions")
    if not isinstance(items, list) or not items:
        raise ValueError(f"{where}: 'questions' must be a non-empty list of {{question_text, responses}}")
    questions = []
    for i, item in enumerate(items):
        qtext = item.get("question_text") if isinstance(item, dict) else None
        responses = item.get("responses") if isinstance(item, dict) else None
        texts = [r.get("response_text") for r in responses or [] if isinstance(r, dict)]
        refs = [t for t in texts if isinstance(t, str) and t.strip()]
        if not isinstance(qtext, str) or not qtext.strip() or not refs:
            raise ValueError(
                f"{where}: questions[{i}] needs 'question_text' and 'responses' with at least one "
                "non-empty 'response_text' (the references answers are scored against)"
            )
        questions.append(Question(qtext.strip(), refs))
    meta = record.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    story_id = meta.get("passage_id") or meta.get("uid") or record.get("id") or where
    return Story(str(story_id), text, questions)


def load_stories(
    path: Path, max_stories: int | None = None, max_questions: int | None = None, skip: int = 0
) -> tuple[list[Story], list[dict[str, Any]]]:
    """Stories of a SQuALITY-format JSONL file (after ``skip`` good ones) and the lines that were bad."""
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise FileNotFoundError(
            f"cannot read --data {path}: {exc.strerror or exc}. Pass a SQuALITY-format JSONL file "
            "(one story per line with 'document' and 'questions')."
        ) from None
    stories: list[Story] = []
    errors: list[dict[str, Any]] = []
    good = 0
    with handle:
        for lineno, line in enumerate(handle, 1):
            if not line.strip():
                continue
            where = f"{path.name}:{lineno}"
            try:
                story = parse_story(json.loads(line), where)
            except json.JSONDecodeError as exc:
                errors.append({"where": where, "error": f"{where}: not valid JSON ({exc.msg})"})
                continue
            except ValueError as exc:
                errors.append({"where": where, "error": str(exc)})
                continue
            good += 1
            if good <= skip:
                continue
            if max_questions is not None:
                story.questions = story.questions[:max_questions]
            stories.append(story)
            if max_stories is not None and len(stories) >= max_stories:
                break
    for err in errors:
        log.warning("skipped: %s", err["error"])
    return stories, errors


# ----------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Variant:
    """How answers are generated: decoding settings, the prompt template, and the pipeline's clean-up."""

    name: str
    settings: GenerationSettings
    prompt: str = PROMPTS["qa"]
    prompt_name: str = "qa"
    clean: bool = True  # drop verbatim repeated sentences, as the pipeline does by default

    def instruction(self, question: str) -> str:
        return self.prompt.format(question=question)

    def postprocess(self, text: str) -> str:
        text = text.strip()
        return drop_repeated_sentences(text) if self.clean else text

    def describe(self) -> dict[str, Any]:
        settings = {k: v for k, v in dataclasses.asdict(self.settings).items() if k != "stop"}
        return {"name": self.name, "prompt": self.prompt_name, "clean": self.clean, **settings}


_SETTING_FIELDS = sorted(f.name for f in dataclasses.fields(GenerationSettings) if f.name != "stop")
_RAW = GenerationSettings(max_new_tokens=64, stop=STOP_STRINGS)
#: Variants whose name alone sets their starting point (their key=value pairs still override it):
#: "pipeline" is the QA task's defaults (``actors.tasks.qa.QASettings``: prompt and ``qa.generation``),
#: "before" the pipeline's QA settings up to e4e184a (64 tokens, no repetition control, the "qa" prompt).
#: Any other name starts from 64 tokens, no repetition control and the "qa" prompt.
PRESETS: dict[str, tuple[GenerationSettings, str]] = {
    "pipeline": (QASettings().generation.apply(_RAW), "paragraph"),
    "before": (_RAW, "qa"),
}


def parse_variant(spec: str, prompts: dict[str, str] | None = None) -> Variant:
    """``"after:max_new_tokens=96,repetition_penalty=1.2,prompt=qa,clean=false"`` -> ``Variant``.

    Keys are ``GenerationSettings`` fields, ``prompt`` (a name from ``PROMPTS`` or ``--prompt``) and
    ``clean``; they override the variant's starting point (``PRESETS`` by name, else 64 tokens without
    repetition control and the "qa" prompt). The pipeline's stop strings always apply.
    """
    prompts = PROMPTS if prompts is None else prompts
    name, params = parse_spec(spec)
    if not name:
        raise ValueError(f"variant {spec!r} needs a name, e.g. after:repetition_penalty=1.2")
    start, start_prompt = PRESETS.get(name, (_RAW, "qa"))
    prompt_name = str(params.pop("prompt", start_prompt))
    if prompt_name not in prompts:
        raise ValueError(
            f"variant {spec!r}: unknown prompt {prompt_name!r}; define it with --prompt "
            f"{prompt_name}=TEMPLATE or use one of {sorted(prompts)}"
        )
    clean = params.pop("clean", True)
    if not isinstance(clean, bool):
        raise ValueError(f"variant {spec!r}: clean={clean!r} must be true or false")
    unknown = sorted(set(params) - set(_SETTING_FIELDS))
    if unknown:
        raise ValueError(
            f"variant {spec!r}: unknown setting(s) {unknown}; "
            f"use {_SETTING_FIELDS}, prompt=NAME or clean=BOOL"
        )
    settings = start.with_(**params)
    return Variant(name, settings, prompts[prompt_name], prompt_name, clean)


def parse_prompt(item: str) -> tuple[str, str]:
    """``NAME=TEMPLATE`` (the template contains ``{question}``)."""
    name, eq, template = item.partition("=")
    if not eq or not name.strip():
        raise ValueError(
            f"--prompt {item!r}: expected NAME=TEMPLATE, e.g. short='{{question}} Answer briefly.'"
        )
    template = template.replace("\\n", "\n")
    try:
        template.format(question="?")
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"--prompt {name}: the template may use only {{question}} ({exc!r})") from None
    if "{question}" not in template:
        raise ValueError(f"--prompt {name}: the template must contain {{question}}")
    return name.strip(), template


@dataclass(frozen=True)
class PolicyRun:
    """One policy at one budget fraction (``fraction`` None: the full cache)."""

    spec: str
    name: str
    params: dict[str, Any] = field(hash=False)
    fraction: float | None

    @property
    def label(self) -> str:
        return self.spec


def parse_policies(specs: Iterable[str], fractions: Iterable[float], full: bool) -> list[PolicyRun]:
    runs = [PolicyRun("full", "full", {}, None)] if full else []
    fractions = list(fractions)
    for spec in specs:
        name, params = parse_spec(spec)
        if name not in POLICIES:
            raise ValueError(
                f"policy spec {spec!r}: unknown policy {name!r}; choose one of {sorted(POLICIES)}"
            )
        if name == "full":
            raise ValueError("the full cache runs once by default (--no-full to skip it); do not list it")
        if "budget" in params:
            raise ValueError(f"policy spec {spec!r}: set budgets with --budget FRACTION, not in the spec")
        runs += [PolicyRun(spec, name, params, f) for f in fractions]
    return runs


def budget_tokens(fraction: float, story_tokens: int, sink: int) -> int:
    """``fraction`` of the story's tokens, rounded down so that budget - sink is a multiple of 16."""
    slots = max(BUDGET_ALIGN, int(fraction * story_tokens) - sink)
    return sink + slots // BUDGET_ALIGN * BUDGET_ALIGN


# ----------------------------------------------------------------------------------------------- program
def question_prompt(instruction: str, suffix: str) -> str:
    """What follows the streamed story for one question (the pipeline's ``TaskContext.prompt``)."""
    return f"\n\n{instruction}{suffix}"


def story_program(
    context: list[int], prompts: dict[str, list[str]], variants: list[Variant]
) -> Program[tuple[StreamState, dict[str, list[GenerationResult]]]]:
    """Stream ``context`` once, then answer every prompt of every variant from that same state."""
    yield Feed(context)
    state = yield Inspect()
    answers: dict[str, list[GenerationResult]] = {}
    done: dict[tuple, list[GenerationResult]] = {}
    for variant in variants:
        # Variants that differ only in post-processing (clean) share one generation.
        key = (variant.settings, tuple(prompts[variant.name]))
        if key not in done:
            done[key] = yield AskMany(list(prompts[variant.name]), variant.settings)
        answers[variant.name] = done[key]
    return state, answers


# ----------------------------------------------------------------------------------------------- scoring
class Scorer:
    """ROUGE-1/2/L F1 (Porter stemming), best reference per metric."""

    def __init__(self) -> None:
        try:
            from rouge_score import rouge_scorer
        except ImportError:
            raise ImportError(
                "the evaluation needs rouge-score: pip install -e '.[eval]' (or pip install rouge-score)"
            ) from None
        self._scorer = rouge_scorer.RougeScorer(list(METRICS), use_stemmer=True)

    def score(self, prediction: str, references: list[str]) -> dict[str, float]:
        best = dict.fromkeys(METRICS, 0.0)
        for ref in references:
            scores = self._scorer.score(ref, prediction)
            for m in METRICS:
                best[m] = max(best[m], scores[m].fmeasure)
        return best


def answer_row(
    scorer: Scorer, question: Question, text: str, base: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    """One scored answer: ``base`` identifies system, policy, budget, variant and story."""
    return {
        **base,
        "question": question.text,
        "answer": text,
        **extra,
        **scorer.score(text, question.references),
        "words": len(text.split()),
        "degenerate": list(degeneracy(text)),
    }


@dataclass
class EvalConfig:
    data: Path = DEFAULT_DATA
    stories: int | None = None
    skip: int = 0
    questions: int | None = None
    policies: list[str] = field(default_factory=lambda: list(DEFAULT_POLICIES))
    budgets: list[float] = field(default_factory=lambda: list(DEFAULT_BUDGETS))
    full: bool = True
    stride: int = 256
    sink: int = 4
    model: str = "default"
    dtype: str = "float32"
    threads: int | None = None
    variants: list[str] = field(default_factory=lambda: ["pipeline"])
    prompts: dict[str, str] = field(default_factory=dict)
    chat: bool = True
    system_prompt: str | None = None
    out: Path | None = Path("results/eval.json")
    plot: Path | None = None
    progress: bool = True
    parallel: bool = True


def frame(tokenizer: Any, chat: bool, system_prompt: str | None) -> tuple[str, str]:
    """The prefix streamed before the story and the suffix closing each instruction (the pipeline's)."""
    return chat_frame(tokenizer, system_prompt, use_template=chat)


def evaluate(
    cfg: EvalConfig,
    model: Any,
    tokenizer: Any,
    stories: list[Story],
    on_story: Any = None,
    errors: list[dict[str, Any]] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run every story through every policy run; returns (answer rows, run rows).

    A run that cannot be set up for a story (e.g. a budget too small for the policy on a short story) is
    logged and appended to ``errors``; the other runs go on.
    """
    from tqdm import tqdm

    from experiments.stream_ppl import RssSampler
    from longread.engine import BatchEngine
    from longread.scheduler import run_program

    prompts = {**PROMPTS, **cfg.prompts}
    variants = [parse_variant(v, prompts) for v in cfg.variants]
    plan = parse_policies(cfg.policies, cfg.budgets, cfg.full)
    prefix, suffix = frame(tokenizer, cfg.chat, cfg.system_prompt)

    def encode(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    prefix_ids = encode(prefix) if prefix else []
    scorer = Scorer()
    rows: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    bar = tqdm(total=len(stories) * len(plan), unit="run", disable=not cfg.progress)
    for story in stories:
        doc = encode(story.text)
        context = prefix_ids + doc
        questions = {
            v.name: [question_prompt(v.instruction(q.text), suffix) for q in story.questions]
            for v in variants
        }
        for run in plan:
            budget = None if run.fraction is None else budget_tokens(run.fraction, len(doc), cfg.sink)
            kwargs = run.params if budget is None else {"budget": budget, "sink": cfg.sink, **run.params}
            try:
                policy = make_policy(run.name, **kwargs)
                # One row per question: a story's answers decode together (the stream's own row answers
                # one of them in place), as the pipeline's AskMany does on its batched engine.
                rows_needed = max(1, len(story.questions)) if cfg.parallel else 1
                engine = BatchEngine(model, policy, rows=rows_needed, stride=cfg.stride, tokenizer=tokenizer)
            except ValueError as exc:  # PolicyConfigError included
                message = f"story {story.id} ({len(doc)} tokens), {run.label} at {run.fraction}: {exc}"
                log.warning("skipped: %s", message)
                if errors is not None:
                    errors.append({"where": story.id, "policy": run.label, "error": message})
                bar.update(1)
                continue
            bar.set_description(f"{story.id} {policy.describe()}"[:60])
            t0 = time.perf_counter()
            with RssSampler() as rss:
                state, answers = run_program(engine, story_program(context, questions, variants))
            seconds = time.perf_counter() - t0
            base = {"system": "longread", "policy": run.label, "fraction": run.fraction, "story": story.id}
            runs.append(
                {
                    **base,
                    "spec": policy.describe(),
                    "budget": budget,
                    "story_tokens": len(doc),
                    "context_tokens": len(context),
                    "kept_fraction": state.cache_tokens / len(context),
                    "kv_mib": state.cache_bytes / 2**20,  # KV buffers held once the story is streamed
                    "rss_peak_mib": (rss.peak - rss.base) / 2**20,
                    "seconds": seconds,
                }
            )
            for variant in variants:
                for i, (question, result) in enumerate(zip(story.questions, answers[variant.name])):
                    rows.append(
                        answer_row(
                            scorer,
                            question,
                            variant.postprocess(result.text),
                            {**base, "variant": variant.name},
                            question_index=i,
                            stop_reason=result.stop_reason,
                            new_tokens=len(result.token_ids),
                        )
                    )
            bar.update(1)
        if on_story is not None:
            on_story(rows, runs)
    bar.close()
    return rows, runs


def payload(
    cfg: EvalConfig, rows: list[dict[str, Any]], runs: list[dict[str, Any]], errors: list[Any]
) -> dict:
    prompts = {**PROMPTS, **cfg.prompts}
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(cfg).items()}
    config["variant_settings"] = [parse_variant(v, prompts).describe() for v in cfg.variants]
    config["prompt_templates"] = prompts
    return {"config": config, "errors": errors, "summary": summarize(rows, runs), "runs": runs, "rows": rows}


def build_parser() -> argparse.ArgumentParser:
    d = EvalConfig()
    p = argparse.ArgumentParser(
        prog="longread-eval", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    p.add_argument("--data", type=Path, default=d.data, help=f"SQuALITY-format JSONL (default {d.data})")
    p.add_argument("--stories", type=int, help="evaluate at most this many stories")
    p.add_argument("--skip", type=int, default=0, help="skip this many stories first")
    p.add_argument("--questions", type=int, help="at most this many questions per story")
    p.add_argument(
        "--policy",
        action="append",
        dest="policies",
        metavar="SPEC",
        help=f"repeatable policy spec, e.g. lacache:span=15,overlap=0 (default {d.policies})",
    )
    p.add_argument(
        "--budget",
        action="append",
        type=float,
        dest="budgets",
        metavar="FRACTION",
        help=f"repeatable budget as a fraction of the story's tokens (default {d.budgets})",
    )
    p.add_argument("--no-full", dest="full", action="store_false", help="skip the full-cache run")
    p.add_argument("--full-only", action="store_true", help="the full-cache run alone (no policies)")
    p.add_argument("--stride", type=int, default=d.stride)
    p.add_argument("--sink", type=int, default=d.sink)
    p.add_argument("--model", default=d.model, help="'default' (embedded SmolLM2), a model folder or a .gguf")
    p.add_argument("--dtype", default=d.dtype, choices=["float32", "bfloat16", "float16"])
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument(
        "--variant",
        action="append",
        dest="variants",
        metavar="NAME[:key=value,...]",
        help="repeatable generation variant: GenerationSettings fields, prompt=NAME, clean=BOOL; the names "
        "'pipeline' (the QA task's settings, the default) and 'before' (those up to e4e184a) are presets",
    )
    p.add_argument(
        "--prompt",
        action="append",
        default=[],
        metavar="NAME=TEMPLATE",
        help="define a prompt template with {question} for variants (built in: qa, paragraph)",
    )
    p.add_argument(
        "--no-chat", dest="chat", action="store_false", help="plain text instead of the chat template"
    )
    p.add_argument("--system-prompt", help="system message (default: the chat template's own)")
    p.add_argument("--out", type=Path, default=d.out, help="JSON results (default results/eval.json)")
    p.add_argument("--plot", type=Path, help="PNG plot (default: --out with .png)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument(
        "--sequential",
        dest="parallel",
        action="store_false",
        help="answer a story's questions one after another in one cache row (default: one row each)",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def parse_args(argv: list[str] | None = None) -> tuple[EvalConfig, bool]:
    """The run's config and whether --verbose was given; bad flags exit with status 2 and the fix."""
    parser = build_parser()
    args = parser.parse_args(argv)
    values = {
        k: v for k, v in vars(args).items() if v is not None and k not in ("prompt", "verbose", "full_only")
    }
    if args.full_only:
        if args.policies or not args.full:
            parser.error("--full-only runs the full cache alone: drop --policy and --no-full")
        values["policies"] = []
    try:
        values["prompts"] = dict(parse_prompt(item) for item in args.prompt)
        cfg = EvalConfig(**values)
        prompts = {**PROMPTS, **cfg.prompts}
        names = [parse_variant(v, prompts).name for v in cfg.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must differ: {names}")
        parse_policies(cfg.policies, cfg.budgets, cfg.full)
    except ValueError as exc:
        parser.error(str(exc))
    if any(not 0 < b < 1 for b in cfg.budgets):
        parser.error(f"--budget takes fractions in (0, 1) of the story's tokens, got {cfg.budgets}")
    for name in ("stories", "questions"):
        value = getattr(cfg, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be >= 1")
    if cfg.stride < 1 or cfg.sink < 0 or cfg.skip < 0:
        parser.error("--stride must be >= 1, --sink and --skip >= 0")
    if cfg.out is not None and cfg.plot is None:
        cfg.plot = cfg.out.with_suffix(".png")
    return cfg, args.verbose


def main(argv: list[str] | None = None) -> int:
    cfg, verbose = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        stories, errors = load_stories(cfg.data, cfg.stories, cfg.questions, cfg.skip)
    except FileNotFoundError as exc:
        print(f"error: {exc}")
        return 2
    if not stories:
        print(f"error: no usable story in {cfg.data} ({len(errors)} bad lines; see the warnings above)")
        return 2
    import torch

    from longread.models import load_model

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model, tokenizer = load_model(None if cfg.model == "default" else cfg.model, dtype=cfg.dtype)
    from experiments.stream_ppl import warm_up

    warm_up(model, torch.tensor(tokenizer(stories[0].text[:2000])["input_ids"]))  # page in the weights

    def save(rows: list[dict[str, Any]], runs: list[dict[str, Any]]) -> None:
        if cfg.out is not None:
            cfg.out.parent.mkdir(parents=True, exist_ok=True)
            cfg.out.write_text(json.dumps(payload(cfg, rows, runs, errors), indent=1, default=str))

    log.info("%d stories, %d questions", len(stories), sum(len(s.questions) for s in stories))
    rows, runs = evaluate(cfg, model, tokenizer, stories, on_story=save, errors=errors)
    save(rows, runs)
    summary = summarize(rows, runs)
    print(format_table(summary))
    if cfg.plot is not None:
        from experiments.plots import plot_eval

        plot_eval(summary, cfg.plot, title=f"{cfg.data.name}: {len(stories)} stories, {len(rows)} answers")
        print(f"results: {cfg.out}  plot: {cfg.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
