"""Job configuration: example files, validation messages, flag overrides, secrets (no Ray)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from actors.tasks import TASKS, JobConfig
from jobs.config import CONFIG_DIR, ConfigError, build_parser, config_from_dict, load_config, read_yaml
from jobs.run import main
from pipeline.output.schema import ROW_KINDS

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "pipeline.md"
#: The job configs of jobs/configs/ (beside them: data they name, e.g. sample_questions.yaml).
EXAMPLES = sorted(p for p in CONFIG_DIR.glob("*.yaml") if "task" in read_yaml(p))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_configs_validate(path):
    data = read_yaml(path)
    cfg = config_from_dict(data["task"], data, str(path))
    assert cfg.output.path and cfg.policy.build().name == cfg.policy.name


#: The generation settings measured on SQuALITY dev (BENCHMARKS.md, "Recommended generation settings per
#: task"): (max_new_tokens, repetition_penalty, no_repeat_ngram_size, finish_sentence).
RECOMMENDED = {
    ("summarize_books.yaml", "segment_generation"): (96, 1.1, 4, 32),
    ("summarize_books.yaml", "final_generation"): (192, 1.1, 4, 48),
    ("answer_questions.yaml", "generation"): (128, 1.1, 4, 32),
    ("analyze_logs.yaml", "generation"): (128, 1.1, 3, 32),
}


@pytest.mark.parametrize(("name", "section"), sorted(RECOMMENDED))
def test_sample_jobs_generate_with_the_recommended_settings(name, section):
    """The three sample jobs keep the measured per-task defaults (no flat override shrinking them back)."""
    data = read_yaml(CONFIG_DIR / name)
    cfg = config_from_dict(data["task"], data, name)
    d = getattr(getattr(cfg, cfg.task), section)
    assert (d.max_new_tokens, d.repetition_penalty, d.no_repeat_ngram_size, d.finish_sentence) == (
        RECOMMENDED[name, section]
    )
    if cfg.task == "qa":
        assert "short paragraph of three to five sentences" in cfg.qa.prompt
    if cfg.task == "logs":
        assert cfg.logs.format == "auto" and cfg.logs.alert_pattern is None  # the per-format alert rules


def test_there_is_an_example_per_job_and_the_main_job_default():
    names = {p.name for p in EXAMPLES}
    assert {"summarize_books.yaml", "answer_questions.yaml", "analyze_logs.yaml"} <= names
    cfg, _ = load_config("summarize", [])  # no --config: the main job's file
    assert cfg.input.paths == [] and cfg.input.max_tokens_per_stream == 4000
    assert cfg.model.source == "default" and cfg.output.path == "output/summarize_books"


def _fields(model: type[BaseModel], prefix: str = "") -> list[tuple[str, object]]:
    """Every field of a settings model, sections and their fields (recursively), by dotted name."""
    out: list[tuple[str, object]] = []
    for key, field in model.model_fields.items():
        out.append((prefix + key, field))
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            out += _fields(sub, f"{prefix}{key}.")
    return out


def test_every_setting_is_documented():
    """In docs/pipeline.md, and in the field itself: its description is the help of the flag that sets
    it (jobs/config.py), so a field without one fails here."""
    text = DOCS.read_text(encoding="utf-8")
    for name, field in JobConfig.model_fields.items():
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            for key in sub.model_fields:
                assert f"`{name}.{key}`" in text, f"{name}.{key} is missing from docs/pipeline.md"
        else:
            assert f"`{name}`" in text, name
    undescribed = [name for name, field in _fields(JobConfig) if not (field.description or "").strip()]
    assert not undescribed, f"settings without a description (Field(description=...)): {undescribed}"


@pytest.mark.parametrize("name", sorted(TASKS))
def test_help_explains_every_flag_with_its_default(name):
    """Every flag has help; a flag that sets a field says the field's description, its name and default."""
    from jobs.config import _overrides_a_setting, field_info

    parser = build_parser(name)
    for action in parser._actions:
        assert action.help, f"{action.option_strings} has no help"
        if _overrides_a_setting(action.dest):
            info = field_info(action.dest)
            assert info is not None, action.dest
            assert info.description and info.description.split(";")[0] in action.help.replace("%%", "%")
            assert f"({action.dest}; default: " in action.help, action.help
    text = parser.format_help()
    assert "exit status" in text.lower() and "--dry-run" in text
    if name == "summarize":  # what the main job's file sets, beside the field's own default
        assert "jobs/configs/summarize_books.yaml sets 4000" in " ".join(text.split())


@pytest.mark.parametrize("job", ["summarize_books", "answer_questions", "analyze_logs"])
def test_help_imports_neither_torch_nor_ray(job):
    """--help answers in a fraction of a second: nothing imports torch, transformers, Ray or pyarrow for it
    (those take seconds, 13.7 s in all on a loaded machine)."""
    import subprocess
    import sys

    code = (
        "import runpy, sys; sys.argv = ['x', '--help']\n"
        "try:\n    runpy.run_module('jobs." + job + "', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "heavy = ('torch', 'transformers', 'ray', 'pyarrow', 'pandas', 'cache_policies')\n"
        "print('HEAVY', sorted(m for m in heavy if m in sys.modules))"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "usage: python -m jobs." + job in run.stdout and "HEAVY []" in run.stdout, run.stdout[-400:]


def test_flags_override_the_file(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(
        "policy: {name: streaming_llm, budget: 256}\ninput: {paths: [a.txt]}\n"
        "logs: {feed: raw, window_tokens: 64}\n"
    )
    cfg, _ = load_config(
        "logs",
        ["--config", str(path), "--input", "b.log", "--input", "c.log", "--budget", "128",
         "--policy", "lacache:span=15,overlap=0", "--set", "logs.top_templates=9", "--no-progress"],
    )  # fmt: skip
    assert cfg.input.paths == ["b.log", "c.log"]
    assert (cfg.policy.name, cfg.policy.budget, cfg.policy.params) == (
        "lacache",
        128,
        {"span": 15, "overlap": 0},
    )
    assert cfg.logs.top_templates == 9 and cfg.logs.window_tokens == 64 and cfg.progress is False
    # --policy NAME over a file whose policy has params: another policy does not inherit them; the same
    # policy keeps those the flag does not set.
    path.write_text("policy: {name: lacache, params: {span: 15, overlap: 0}}\ninput: {paths: [a.txt]}\n")
    for spec, params in [("streaming_llm", {}), ("cascading:cascades=2", {"cascades": 2}),
                         ("lacache:span=3", {"span": 3, "overlap": 0})]:  # fmt: skip
        cfg, _ = load_config("summarize", ["--config", str(path), "--policy", spec])
        assert (cfg.policy.name, cfg.policy.params) == (spec.split(":")[0], params)
        cfg.policy.build()
    path.write_text("policy: {params: {span: 7, overlap: 1}}\ninput: {paths: [a.txt]}\n")  # the default name
    cfg, _ = load_config("summarize", ["--config", str(path), "--policy", "lacache"])
    assert (cfg.policy.name, cfg.policy.params) == ("lacache", {"span": 7, "overlap": 1})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"policy": {"name": "lru"}}, r"policy: unknown cache policy 'lru'; choose one of \['cascading'"),
        (
            {"policy": {"name": "cascading", "budget": 6}},
            r"cannot give cascades=4 sub-caches a slot each; use budget >= 8",
        ),
        ({"policy": {"params": {"spam": 1}}}, r"policy: lacache: .*spam"),
        (
            {"input": {"paths": ["x"], "encoding": "utf-16"}},
            r"input.encoding: encoding 'utf-16' is not ASCII",
        ),
        (
            {"input": {"paths": ["x"], "max_tokens_per_stream": 0}},
            r"input.max_tokens_per_stream: Input should be",
        ),
        (
            {"logs": {"window_tokens": 100, "window_seconds": 60}},
            r"logs: set either window_tokens or window_seconds",
        ),
        ({"logs": {"group_by": "line"}}, r"logs: group_by='line' needs key_pattern"),
        ({"logs": {"report_prompt": "{nope}"}}, r"unknown placeholders \['nope'\]"),
        ({"qa": {"prompt": "no question here"}}, r"qa.prompt: .*must contain \{question\}"),
        ({"outputs": {}}, r"outputs: Extra inputs are not permitted"),
    ],
)
def test_invalid_settings_name_the_field_and_the_problem(data, message):
    data = {"input": {"paths": ["x"]}, **data}
    with pytest.raises(ConfigError) as info:
        config_from_dict("logs", data, "test.yaml")
    assert re.search(message, str(info.value)), str(info.value)
    assert str(info.value).startswith("invalid configuration (test.yaml):")


def test_cli_reports_config_errors_with_status_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("policy: [not, a, mapping\n")
    assert main("summarize", ["--config", str(bad)]) == 2
    assert "is not valid YAML" in capsys.readouterr().err
    assert main("qa", ["--budget", "-1", "--input", "x"]) == 2
    assert "policy.budget: Input should be greater than or equal to 1" in capsys.readouterr().err
    assert main("qa", []) == 2  # logs and summarize play a sample without inputs; qa needs questions
    assert "input.paths is empty" in capsys.readouterr().err
    assert main("logs", ["--config", str(tmp_path / "nope.yaml")]) == 2
    assert "cannot read config file" in capsys.readouterr().err
    assert main("summarize", ["--input", "x", "--set", "input.paths=[a"]) == 2
    assert "the value is not valid YAML" in capsys.readouterr().err
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("input: {paths: [caf\u00e9.txt]}\n".encode("latin-1"))
    assert main("summarize", ["--config", str(latin)]) == 2
    assert "is not UTF-8 text" in capsys.readouterr().err
    flat = tmp_path / "flat.yaml"
    flat.write_text("policy: lacache\ninput: {paths: [a.txt]}\n")
    cfg, _ = load_config("summarize", ["--config", str(flat), "--policy", "streaming_llm"])
    assert cfg.policy.name == "streaming_llm"  # a flat `policy: NAME` is replaced, not a crash


def test_secrets_are_masked_everywhere_but_the_storage_options():
    cfg = config_from_dict(
        "summarize",
        {
            "storage": {
                "key": "AKIAFAKEKEY",
                "secret": "fake/secret+value",
                "endpoint_url": "http://127.0.0.1:9",
            }
        },
    )
    dumped = str(cfg.public_dict()) + repr(cfg) + str(cfg) + cfg.model_dump_json()
    assert "AKIAFAKEKEY" not in dumped and "fake/secret+value" not in dumped
    storage = cfg.storage.to_storage()
    assert "fake/secret+value" not in repr(storage) and "AKIAFAKEKEY" not in str(storage)
    opts = storage.options("s3")
    assert opts["key"] == "AKIAFAKEKEY" and opts["secret"] == "fake/secret+value"
    assert opts["client_kwargs"]["endpoint_url"] == "http://127.0.0.1:9"


def test_endpoint_and_region_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1234")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-north-1")
    opts = config_from_dict("summarize", {}).storage.to_storage().options("s3")
    assert opts["client_kwargs"] == {"endpoint_url": "http://127.0.0.1:1234", "region_name": "eu-north-1"}
    assert "key" not in opts  # credentials: botocore's own chain


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_registered_task_is_wired(name):
    """A task module plus its registry line is all it takes: entry point, rows, flags and section fit."""
    task = TASKS[name]
    assert task.name == name and name in JobConfig.model_fields
    assert JobConfig.model_fields[name].annotation is task.Settings
    assert (ROOT / "jobs" / f"{task.job_name}.py").read_text().count(f'main("{name}")') == 1
    assert set(task.row_kinds) <= set(ROW_KINDS) - {"error"} and task.preview_kind in task.row_kinds
    if task.default_config:
        assert (CONFIG_DIR / task.default_config).is_file()
    for action in build_parser(name)._actions:  # every flag names a setting that exists
        if "." in action.dest:
            section, key = action.dest.split(".", 1)
            assert key in JobConfig.model_fields[section].annotation.model_fields, action.dest
    data = {"input": {"paths": ["x"]}}
    cfg = config_from_dict(name, data, "test")
    assert cfg.output.path == f"output/{task.job_name}"


def test_generation_controls_per_kind_of_output():
    """Each kind of output has its own length and repetition controls; the flat max_new_tokens keys of
    earlier configs are shorthand for them and keep the kind's other defaults."""
    cfg = config_from_dict("summarize", {})
    seg, final = cfg.summarize.segment_generation, cfg.summarize.final_generation
    assert (seg.max_new_tokens, seg.no_repeat_ngram_size, seg.finish_sentence) == (96, 4, 32)
    assert (final.max_new_tokens, final.finish_sentence) == (192, 48)
    cfg = config_from_dict(
        "summarize",
        {"summarize": {"final_max_new_tokens": 64, "segment_generation": {"repetition_penalty": 1.3}}},
    )
    final, seg = cfg.summarize.final_generation, cfg.summarize.segment_generation
    assert (final.max_new_tokens, final.finish_sentence) == (64, 48)  # the kind's other defaults stay
    assert (seg.max_new_tokens, seg.repetition_penalty) == (96, 1.3)
    qa = config_from_dict("qa", {"input": {"paths": ["x"]}, "qa": {"max_new_tokens": 12}}).qa.generation
    assert (qa.max_new_tokens, qa.repetition_penalty, qa.no_repeat_ngram_size) == (12, 1.1, 4)
    logs = config_from_dict("logs", {"input": {"paths": ["x"]}}).logs.generation
    assert (logs.max_new_tokens, logs.no_repeat_ngram_size, logs.finish_sentence) == (128, 3, 32)
    cfg, _ = load_config("logs", ["--input", "x", "--set", "logs.generation.finish_sentence=0"])
    assert cfg.logs.generation.finish_sentence == 0 and cfg.logs.generation.max_new_tokens == 128
    # What the engine gets: the job's sampling plus the kind's controls.
    settings = cfg.logs.generation.apply(cfg.generation.sampling(stop=("</s>",)))
    assert (settings.max_new_tokens, settings.no_repeat_ngram_size, settings.stop) == (128, 3, ("</s>",))
    with pytest.raises(ConfigError, match=r"max_new_tokens=12 and generation.max_new_tokens=20 disagree"):
        config_from_dict(
            "qa",
            {"input": {"paths": ["x"]}, "qa": {"max_new_tokens": 12, "generation": {"max_new_tokens": 20}}},
        )
    with pytest.raises(ConfigError, match=r"qa.generation.repetition_penalty"):
        config_from_dict("qa", {"input": {"paths": ["x"]}, "qa": {"generation": {"repetition_penalty": 0}}})
    with pytest.raises(ConfigError, match=r"unknown log format 'nginx'"):
        config_from_dict("logs", {"input": {"paths": ["x"]}, "logs": {"format": "nginx"}})


def test_local_actor_requests_fit_the_machine(monkeypatch):
    """Without an autoscaler, an actor asking more than the machine has would wait forever: requests are
    capped to what a local Ray has, and what cannot fit at all is refused with the fix."""
    import ray

    from actors.tasks import JobConfig
    from pipeline.cluster.session import actor_resources

    monkeypatch.delenv("RAY_ADDRESS", raising=False)

    def cfg(**res):
        device = res.pop("device", "auto")
        return JobConfig.model_validate({"task": "summarize", "model": {"device": device}, "resources": res})

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    assert actor_resources(cfg(threads_per_actor=4), None) == (1, {"num_cpus": 2.0})
    assert actor_resources(cfg(actors=3, threads_per_actor=1), None) == (2, {"num_cpus": 1.0})
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 16.0, "GPU": 1.0})
    assert actor_resources(cfg(actors=2), None) == (1, {"num_gpus": 1.0, "num_cpus": 1.0})
    with pytest.raises(ValueError, match=r"1 GPU\(s\), fewer than one actor's 2; .*gpus_per_actor"):
        actor_resources(cfg(gpus_per_actor=2), None)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 16.0})
    with pytest.raises(ValueError, match="no GPU yet"):
        actor_resources(cfg(device="cuda"), None)
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")  # a cluster with an autoscaler: asked as given
    assert actor_resources(cfg(device="cuda", actors=4), None) == (4, {"num_gpus": 1.0, "num_cpus": 1.0})


# ---------------------------------------------------------------------------- the samples from a fresh clone
def _local_references(cfg) -> list[str]:
    """The local paths a config reads (inputs, questions file, model), as written in it."""
    refs = [p for p in cfg.input.paths]
    if cfg.task == "qa" and cfg.qa.questions_file:
        refs.append(cfg.qa.questions_file)
    if cfg.model.source != "default":
        refs.append(cfg.model.source)
    return [r for r in refs if not r.startswith("s3://")]  # cluster samples read buckets: not run here


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_fresh_clone_sample_configs_read_only_the_repository_and_the_setup_assets(path):
    """A fresh clone plus scripts/setup.sh runs every local sample: it reads files inside the repository
    (relative to its root, where the jobs run) or the assets set-up fetched (empty input.paths: the sample
    plays), never a path beside the repository (../shared) or on someone's machine."""
    data = read_yaml(path)
    cfg = config_from_dict(data["task"], data, str(path))
    for ref in _local_references(cfg):
        assert not Path(ref).is_absolute() and ".." not in Path(ref).parts, f"{path.name} reads {ref}"
        assert any((ROOT / ref).parent.glob(Path(ref).name)), f"{path.name} reads {ref}: not in the repo"


def test_fresh_clone_qa_sample_asks_every_sample_play_its_questions(monkeypatch):
    """The QA sample plans one stream per sample play (the plays scripts/setup.sh fetches), each with
    questions of its own from jobs/configs/sample_questions.yaml; no model, no Ray."""
    from actors.tasks import make_task
    from longread.assets import sample_books
    from pipeline.inputs.sources import expand_inputs

    monkeypatch.chdir(ROOT)  # the jobs run from the repository's root (relative paths)
    cfg, _ = load_config("qa", ["--config", str(CONFIG_DIR / "answer_questions.yaml")])
    assert cfg.input.max_tokens_per_stream == 4000  # small enough for a few minutes on 2 CPUs
    plays = sample_books()
    questions = read_yaml(CONFIG_DIR / "sample_questions.yaml")
    assert set(questions) == {p.name for p in plays}
    task = make_task(cfg)
    assert task.inputs() == [str(p) for p in plays]
    sources = expand_inputs(task.inputs(), None, task.read_options())
    assert [s.error for s in sources] == [None] * len(plays)
    asked = {}
    for unit in task.plan(sources):
        for info, doc in task.documents(unit):
            asked[Path(info.stream_id).name] = task.questions_for(doc)
    assert asked == questions and all(len(q) >= 3 for q in asked.values())
    # A qa job without inputs or questions of its own is refused, naming the sample config.
    with pytest.raises(ConfigError, match=r"input.paths is empty: .*jobs/configs/answer_questions.yaml"):
        load_config("qa", [])
    cfg, _ = load_config("qa", ["--question", "Who speaks first?"])  # questions of its own: the plays
    assert make_task(cfg).inputs() == [str(p) for p in plays]
