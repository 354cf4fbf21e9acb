"""The peer, side by side: kvpress's question-agnostic presses on the same stories, prompts and settings.

    python benchmarks/bench_kvpress.py --setup            # once: ~/.cache/longread/kvpress-venv
    python benchmarks/bench_kvpress.py --stories 3 --budget 0.25 --threads 1 \
        --variant after:max_new_tokens=128,repetition_penalty=1.1,no_repeat_ngram_size=4,finish_sentence=32 \
        --out results/kvpress.json
    python -m experiments.plots eval results/eval.json results/kvpress.json --out docs/eval_rougeL.png

kvpress 0.5.5 pins transformers < 5.3 while longread needs 5.24, so it lives in its own virtual environment
(``--setup``; not part of CI). This script, run with longread's environment, builds exactly the token ids
longread streams (the chat frame's prefix + the story as context; each question as the pipeline words it,
closing the user's message) and the budget longread would get (``experiments.evaluate.budget_tokens``),
then runs itself inside the kvpress environment as a worker: per story and press, one prefill of the whole
context under the press (``with press(model)``, compression ratio = 1 - budget / context tokens, so the
same number of tokens is kept), then every question answered from a copy of the compressed cache with
longread's own decoder (``longread.generation``: same greedy decoding, repetition control, stop strings
and sentence finishing), at the original positions as kvpress's pipeline does. Answers are scored and
tabulated by ``experiments.evaluate`` exactly like longread's, with the worker's peak RSS growth (kvpress
holds the whole context's KV cache, and the prefill's activations, before it compresses).

``--press none`` runs the uncompressed model: with identical prompts its answers must match longread's
full cache (a check that both sides see the same input).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: the repository's packages come first
    sys.path.insert(0, str(ROOT))

log = logging.getLogger("bench_kvpress")

KVPRESS = "kvpress==0.5.5"
TORCH = "torch==2.13.0"  # the CPU wheel on this machine's disk; any other version pulls a multi-GB CUDA build
PRESSES = ("StreamingLLMPress", "KnormPress", "ExpectedAttentionPress", "SnapKVPress")
ROPE_THETA = 1e5  # SmolLM2's rotary base


def default_venv() -> Path:
    from longread.assets import home

    return home() / "kvpress-venv"


# ----------------------------------------------------------------------------------------------- setup
def setup(venv: Path) -> None:
    """Create ``venv`` with torch 2.13.0 (pinned first) and kvpress 0.5.5."""
    base = getattr(sys, "_base_executable", sys.executable)
    if not (venv / "bin" / "python").exists():
        print(f"creating {venv} with {base}")
        subprocess.run([base, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    subprocess.run([py, "-m", "pip", "install", "-q", TORCH], check=True)
    # torch named again so pip keeps the installed CPU build instead of resolving another one.
    subprocess.run([py, "-m", "pip", "install", "-q", TORCH, KVPRESS], check=True)
    out = subprocess.run(
        [py, "-c", "import torch, transformers, kvpress; print(torch.__version__, transformers.__version__)"],
        check=True,
        capture_output=True,
        text=True,
    )
    print(f"{venv}: torch, transformers = {out.stdout.strip()}; kvpress 0.5.5")


# ----------------------------------------------------------------------------------------------- worker
class PeakRss:
    """Peak resident memory of this process, sampled in a thread (the worker has no longread deps)."""

    def __init__(self) -> None:
        import psutil

        self.proc = psutil.Process()
        self.base = self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def check_rope(model: Any) -> str:
    """The rotary base the loaded model uses; fixed to ``ROPE_THETA`` if transformers read it wrong."""
    import torch

    rotary = model.model.rotary_emb
    dim = rotary.inv_freq.numel() * 2
    want = 1.0 / (ROPE_THETA ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    if torch.allclose(rotary.inv_freq.float().cpu(), want, rtol=1e-5):
        return "ok"
    rotary.inv_freq.copy_(want.to(rotary.inv_freq))
    if hasattr(rotary, "original_inv_freq"):
        rotary.original_inv_freq = want.to(rotary.inv_freq)
    return "fixed"


def press_ratio(n: int, budget: int) -> float:
    """The compression ratio at which kvpress keeps exactly ``budget`` of ``n`` tokens: it keeps
    ``int(n * (1 - ratio))``, and ``1 - budget / n`` lands a rounding error below ``budget`` for about half
    of the lengths (it then kept budget - 1); aiming half a token above is exact."""
    return max(0.0, (n - budget - 0.5) / n)


def make_press(name: str, ratio: float) -> Any:
    import kvpress

    if name == "StreamingLLMPress":
        return kvpress.StreamingLLMPress(compression_ratio=ratio, n_sink=4)
    if name == "SnapKVPress":  # question-agnostic: the window is the end of the context, not a question
        return kvpress.SnapKVPress(compression_ratio=ratio)
    return getattr(kvpress, name)(compression_ratio=ratio)


def worker(job_path: Path, out_path: Path) -> None:
    """Inside the kvpress venv: answer the job's questions under each press; one JSON line per run."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

    transformers.utils.logging.disable_progress_bar()

    from longread.generation import Decoder, GenerationSettings, eos_ids

    job = json.loads(job_path.read_text())
    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    model = AutoModelForCausalLM.from_pretrained(
        job["model"], dtype=torch.float32, attn_implementation="sdpa"
    )
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(job["model"])
    rope = check_rope(model)
    eos = eos_ids(model, tokenizer)
    variants = {
        name: GenerationSettings(**{**s, "stop": tuple(s["stop"])}) for name, s in job["settings"].items()
    }
    with torch.inference_mode():
        model(torch.tensor([job["stories"][0]["context"][:64]]))  # page in the weights before measuring
    with out_path.open("a") as out:
        for story in job["stories"]:
            context = torch.tensor([story["context"]])
            n = context.shape[1]
            for run in job["runs"]:
                if (story["id"], run["press"], run["fraction"]) in {tuple(d) for d in job.get("done", [])}:
                    continue
                budget = story["budgets"][str(run["fraction"])] if run["fraction"] is not None else n
                ratio = press_ratio(n, budget)
                t0 = time.perf_counter()
                with PeakRss() as rss, torch.inference_mode():
                    cache = DynamicCache()
                    if run["press"] == "none":
                        model(context, past_key_values=cache, use_cache=True, logits_to_keep=1)
                    else:
                        with make_press(run["press"], ratio)(model):
                            model(context, past_key_values=cache, use_cache=True, logits_to_keep=1)
                    kept = cache.get_seq_length()
                    kv_bytes = sum(
                        layer.keys.nbytes + layer.values.nbytes
                        for layer in cache.layers
                        if layer.keys is not None
                    )
                    answers: dict[str, list[dict[str, Any]]] = {}
                    for name, prompts in story["prompts"].items():
                        answers[name] = [
                            _answer(
                                model, tokenizer, copy.deepcopy(cache), n, q, variants[name], eos, Decoder
                            )
                            for q in prompts
                        ]
                record = {
                    "story": story["id"],
                    "press": run["press"],
                    "fraction": run["fraction"],
                    "budget": budget,
                    "compression_ratio": ratio,
                    "context_tokens": n,
                    "kept_tokens": kept,
                    "kv_mib": kv_bytes / 2**20,
                    "kv_full_mib": kv_bytes / max(kept, 1) * n / 2**20,
                    "rss_peak_mib": (rss.peak - rss.base) / 2**20,
                    "seconds": time.perf_counter() - t0,
                    "rope": rope,
                    "answers": answers,
                }
                out.write(json.dumps(record) + "\n")
                out.flush()
                print(f"{story['id']} {run['press']} {run['fraction']}: {record['seconds']:.0f}s", flush=True)


def _answer(
    model: Any,
    tokenizer: Any,
    cache: Any,
    position: int,
    prompt: list[int],
    settings: Any,
    eos: set[int],
    decoder_cls: Any,
) -> dict[str, Any]:
    """Feed ``prompt`` after the (compressed) context at its original positions, then decode."""
    import torch

    def step(ids: list[int], pos: int) -> torch.Tensor:
        positions = torch.arange(pos, pos + len(ids))[None]
        out = model(torch.tensor([ids]), past_key_values=cache, position_ids=positions, use_cache=True)
        return out.logits[0, -1].float()

    logits = step(prompt, position)
    position += len(prompt)
    dec = decoder_cls(settings, tokenizer, eos)
    while True:
        row = logits[None].clone()
        decoder_cls.process(row, [dec])
        token = decoder_cls.choose(row, [dec])[0]
        if dec.push(token):
            break
        logits = step([token], position)
        position += 1
    result = dec.result()
    return {"text": result.text, "stop_reason": result.stop_reason, "new_tokens": len(result.token_ids)}


# ----------------------------------------------------------------------------------------------- driver
def build_job(args: argparse.Namespace) -> tuple[dict[str, Any], list[Any], Any]:
    from experiments.evaluate import (
        PROMPTS,
        budget_tokens,
        frame,
        load_stories,
        parse_prompt,
        parse_variant,
        question_prompt,
    )
    from longread.assets import default_model_dir

    prompts = {**PROMPTS, **dict(parse_prompt(p) for p in args.prompt)}
    variants = [parse_variant(v, prompts) for v in args.variants or ["pipeline"]]
    stories, errors = load_stories(args.data, args.stories, args.questions, args.skip)
    if not stories:
        raise SystemExit(f"error: no usable story in {args.data}")
    model_dir = default_model_dir() if args.model == "default" else Path(args.model)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    prefix, suffix = frame(tokenizer, not args.no_chat, args.system_prompt)

    def encode(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    prefix_ids = encode(prefix) if prefix else []
    presses = args.presses or list(PRESSES)
    fractions: list[float | None] = [None] if presses == ["none"] else list(args.budgets or [0.25])
    job_stories = []
    for story in stories:
        doc = encode(story.text)
        job_stories.append(
            {
                "id": story.id,
                "context": prefix_ids + doc,
                "story_tokens": len(doc),
                "budgets": {str(f): budget_tokens(f, len(doc), 4) for f in fractions if f is not None},
                "prompts": {
                    v.name: [encode(question_prompt(v.instruction(q.text), suffix)) for q in story.questions]
                    for v in variants
                },
            }
        )
    settings = {}
    for v in variants:
        s = {k: getattr(v.settings, k) for k in v.settings.__dataclass_fields__}
        settings[v.name] = {**s, "stop": list(v.settings.stop)}
    job = {
        "model": str(model_dir),
        "threads": args.threads,
        "settings": settings,
        "runs": [{"press": p, "fraction": f} for p in presses for f in fractions],
        "stories": job_stories,
    }
    return job, stories, (variants, errors)


def score(records: list[dict[str, Any]], stories: list[Any], variants: list[Any]) -> tuple[list, list]:
    from experiments.evaluate import Scorer, answer_row

    scorer = Scorer()
    by_id = {s.id: s for s in stories}
    rows, runs = [], []
    for rec in records:
        story = by_id[rec["story"]]
        base = {
            "system": "kvpress",
            "policy": rec["press"],
            "fraction": rec["fraction"],
            "story": rec["story"],
        }
        runs.append(
            {
                **base,
                "spec": f"{rec['press']}(compression_ratio={rec['compression_ratio']:.4f})",
                "budget": rec["budget"],
                "context_tokens": rec["context_tokens"],
                "kept_fraction": rec["kept_tokens"] / rec["context_tokens"],
                "kv_mib": rec["kv_mib"],
                "kv_full_mib": rec["kv_full_mib"],
                "rss_peak_mib": rec["rss_peak_mib"],
                "seconds": rec["seconds"],
                "rope": rec["rope"],
            }
        )
        for v in variants:
            for i, (q, a) in enumerate(zip(story.questions, rec["answers"][v.name], strict=True)):
                rows.append(
                    answer_row(
                        scorer,
                        q,
                        v.postprocess(a["text"]),
                        {**base, "variant": v.name},
                        question_index=i,
                        stop_reason=a["stop_reason"],
                        new_tokens=a["new_tokens"],
                    )
                )
    return rows, runs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--setup", action="store_true", help="create the kvpress virtual environment and exit")
    p.add_argument("--venv", type=Path, default=default_venv())
    p.add_argument("--worker", nargs=2, type=Path, metavar=("JOB", "OUT"), help=argparse.SUPPRESS)
    p.add_argument("--data", type=Path, default=Path("../shared/data/squality/dev.jsonl"))
    p.add_argument("--stories", type=int)
    p.add_argument("--skip", type=int, default=0)
    p.add_argument("--questions", type=int)
    p.add_argument("--press", action="append", dest="presses", choices=[*PRESSES, "none"])
    p.add_argument(
        "--budget", action="append", type=float, dest="budgets", help="kept fraction (default 0.25)"
    )
    p.add_argument("--variant", action="append", dest="variants", help="as longread-eval --variant")
    p.add_argument("--prompt", action="append", default=[], help="as longread-eval --prompt")
    p.add_argument("--no-chat", action="store_true")
    p.add_argument("--system-prompt")
    p.add_argument("--model", default="default", help="a model folder ('default': the converted SmolLM2)")
    p.add_argument("--threads", type=int)
    p.add_argument("--out", type=Path, default=Path("results/kvpress.json"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.setup:
        setup(args.venv)
        return 0
    if args.worker:
        worker(*args.worker)
        return 0
    if args.presses and "none" in args.presses and len(args.presses) > 1:
        p.error("--press none (the uncompressed check) runs alone")
    if not (args.venv / "bin" / "python").exists():
        p.error(
            f"no kvpress environment at {args.venv}: run `python benchmarks/bench_kvpress.py --setup` first"
        )
    job, stories, (variants, errors) = build_job(args)
    raw = args.out.with_suffix(".raw.jsonl")  # the worker appends here; a rerun resumes after what is done
    raw.parent.mkdir(parents=True, exist_ok=True)
    done = [json.loads(line) for line in raw.read_text().splitlines()] if raw.exists() else []
    job["done"] = [[r["story"], r["press"], r["fraction"]] for r in done]
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(job, f)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [str(args.venv / "bin" / "python"), str(Path(__file__).resolve()), "--worker", f.name, str(raw)]
    n_runs = len(job["runs"]) * len(job["stories"]) - len(done)
    print(f"kvpress worker: {n_runs} runs ({len(job['stories'])} stories x {len(job['runs'])} press/budget)")
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)
    os.unlink(f.name)
    wanted = {s.id for s in stories}
    records = [json.loads(line) for line in raw.read_text().splitlines()]
    records = [r for r in records if r["story"] in wanted]
    rows, runs = score(records, stories, variants)
    from experiments.evaluate import format_table, summarize

    summary = summarize(rows, runs)
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "worker"}
    args.out.write_text(
        json.dumps(
            {"config": config, "errors": errors, "summary": summary, "runs": runs, "rows": rows}, indent=1
        )
    )
    print(format_table(summary))
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
