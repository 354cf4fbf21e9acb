"""Test helpers for the pipeline: a tiny random model on disk, small corpora (good and bad), configs.

The tiny model is a 4-layer Llama with random weights and a byte-level BPE tokenizer trained here on a few
sentences, saved with a ChatML chat template like SmolLM2's, so ``load_model(folder)`` works in Ray
actors exactly as with a real model, in well under a second and without any download.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

SENTENCES = [
    "It was the best of times, it was the worst of times, it was the age of wisdom.",
    "Call me Ishmael. Some years ago, never mind how long precisely, I went to sea.",
    "CHAPTER I. The Beginning. ACT II. SCENE III. A heath near the castle.",
    "2024-01-05 10:00:01,123 INFO web-1 request served in 12 ms status=200",
    "2024-01-05 10:00:02,456 ERROR db-2 connection refused: timeout after 30 s",
    "Summarize the passage above in 2 sentences. Answer the question about the text above.",
    "Who is the narrator? What happens at the end? The whale, the ship, the captain.",
]

BOOK_CHAPTERS = [
    ("CHAPTER I.", "The ship left the harbour at dawn. The captain watched the grey sea and said nothing. "),
    ("CHAPTER II.", "A storm rose in the night. The sailors worked the ropes until their hands bled. "),
    ("CHAPTER III.", "At last the coast appeared, green and quiet, and the crew sang as they rowed ashore. "),
]


def build_tiny_model(path: Path) -> Path:
    """Save a tiny random Llama and its tokenizer in ``path`` (once; reused if present)."""
    if (path / "config.json").exists():
        return path
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(SENTENCES * 4, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    fast.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    fast.save_pretrained(tmp)
    tmp.rename(path)
    return path


def book_text(repeat: int = 6) -> str:
    """A small book with three chapters (each long enough to be a segment of its own at 64 tokens)."""
    parts = ["THE VOYAGE\n\nby Nobody\n\n"]
    for heading, body in BOOK_CHAPTERS:
        parts.append(f"{heading}\n\n" + (body + "\n") * repeat + "\n")
    return "".join(parts)


def log_lines(n: int = 120, host: str = "web-1", start_s: int = 0) -> list[str]:
    out = []
    for i in range(n):
        t = start_s + i * 7
        level = "ERROR" if i % 17 == 0 else "WARN" if i % 5 == 0 else "INFO"
        message = (
            f"connection refused to db-{i % 3}" if level == "ERROR" else f"request {i} served in {i % 40} ms"
        )
        out.append(
            f"2024-01-05 {10 + t // 3600:02d}:{t // 60 % 60:02d}:{t % 60:02d},{i % 1000:03d} "
            f"{level} {host} {message}"
        )
    return out


def write_good_corpus(folder: Path) -> dict[str, Path]:
    """Two plain books, one gzip book, and a JSONL file of two records with questions."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "book_a": folder / "voyage.txt",
        "book_b": folder / "voyage_again.txt",
        "book_gz": folder / "voyage_gz.txt.gz",
        "records": folder / "stories.jsonl",
    }
    files["book_a"].write_text(book_text(), encoding="utf-8")
    files["book_b"].write_text(book_text(repeat=3), encoding="utf-8")
    files["book_gz"].write_bytes(gzip.compress(book_text(repeat=2).encode()))
    records = [
        {"id": "s1", "text": book_text(repeat=2), "questions": [{"question_text": "Who watched the sea?"}]},
        {
            "id": "s2",
            "text": "A short tale.\nThe end.\n",
            "questions": ["How long is it?", "How does it end?"],
        },
    ]
    files["records"].write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    return files


def write_bad_corpus(folder: Path) -> dict[str, Path]:
    """One input of every bad kind, keyed by the error kind it gives (a missing one is returned but not
    created; ``access_denied`` only when not running as root, who reads any file)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "encoding": folder / "latin1.txt",
        "empty": folder / "empty.txt",
        "binary": folder / "image.txt",
        "corrupt_gzip": folder / "broken.txt.gz",
        "missing": folder / "not_there.txt",
        "unreadable": folder / "socket.txt",
    }
    files["encoding"].write_bytes("Caf\u00e9 au lait\n".encode("latin-1") * 3)
    files["empty"].write_text("   \n\n", encoding="utf-8")
    files["binary"].write_bytes(bytes(range(256)) * 8)
    files["corrupt_gzip"].write_bytes(gzip.compress(book_text().encode())[:60])
    sock = socket.socket(socket.AF_UNIX)  # not a file anyone can open and read, even root
    sock.bind(str(files["unreadable"]))
    sock.close()
    if os.geteuid() != 0:
        files["access_denied"] = folder / "locked.txt"
        files["access_denied"].write_text("secret\n", encoding="utf-8")
        files["access_denied"].chmod(0)
    return files


#: The tiny random model writes no sentence ends: no extra tokens to finish one (answers stay short).
NO_FINISH = {"finish_sentence": 0}


def job_config(task: str, inputs: list[str], output: str, model_dir: Path, **sections: dict[str, Any]) -> Any:
    """A small, fast JobConfig for the tiny model (sections override the defaults, merged per section)."""
    from actors.tasks import JobConfig

    data: dict[str, Any] = {
        "task": task,
        "model": {"source": str(model_dir), "device": "cpu"},
        "policy": {"name": "lacache", "budget": 48, "stride": 16, "params": {"span": 2}},
        "input": {"paths": inputs},
        "output": {"path": output},
        "resources": {"actors": 2, "threads_per_actor": 1},
        "progress": False,
        "summarize": {
            "segment_tokens": 96,
            "min_segment_tokens": 16,
            "segment_max_new_tokens": 6,
            "final_max_new_tokens": 6,
            "segment_generation": NO_FINISH,
            "final_generation": NO_FINISH,
        },
        "qa": {"max_new_tokens": 6, "generation": NO_FINISH},
        # The raw feed with small token windows unless a test asks for the condensed one (the default).
        "logs": {"feed": "raw", "window_tokens": 256, "max_new_tokens": 6, "generation": NO_FINISH},
    }
    logs = sections.get("logs", {})
    if "window_seconds" in logs or logs.get("feed") == "condensed":
        del data["logs"]["window_tokens"]
    for name, values in sections.items():
        if isinstance(data.get(name), dict):
            data[name] = {**data[name], **values}
        else:
            data[name] = values
    return JobConfig.model_validate(data)


def read_output(path: str | Path, storage: Any = None) -> Any:
    """All rows of an output folder as a pandas DataFrame (through the writer's own reader)."""
    from pipeline.output.writer import read_results

    return read_results(str(path), storage).to_pandas()


class Moto:
    """moto's S3 on one loopback port that can go away (connections refused) and come back (same state:
    moto keeps its buckets in this process, whichever server thread answers)."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self.cls = ThreadedMotoServer
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        self.host, self.port = self.server.get_host_and_port()

    def stop(self) -> None:
        self.server.stop()
        self.server._server.server_close()  # close the listening socket too: refused, not hanging

    def start(self) -> None:
        self.server = self.cls(ip_address=self.host, port=self.port, verbose=False)
        self.server.start()


def kill_session(proc: Any) -> None:
    """A hard crash of a job started with ``start_new_session=True``: SIGKILL to its process group and to
    every process below it (its in-process Ray: GCS, raylet, actors), found before the kill because
    orphans lose their parent; waits until they are gone."""
    import signal

    import psutil

    tree = psutil.Process(proc.pid).children(recursive=True)
    os.killpg(proc.pid, signal.SIGKILL)
    for child in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    proc.wait()
    psutil.wait_procs(tree, timeout=30)


@contextlib.contextmanager
def local_ray() -> Iterator[Any]:
    """A local Ray of two CPUs for one test module (skips when Ray is not installed)."""
    import pytest

    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        yield ray
    finally:
        ray.shutdown()


def spawn_driver(cfg: Any, config_file: Path, cwd: Path) -> Any:
    """Start the summarize job's driver as a subprocess in a session of its own (so ``kill_session`` can
    crash it with its in-process Ray), from ``cfg`` written to ``config_file``."""
    import subprocess
    import sys

    import yaml

    config_file.write_text(yaml.safe_dump(cfg.public_dict()))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.Popen(
        [sys.executable, "-m", "jobs.summarize_books", "--config", str(config_file)],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def take_s3_away(fs: Any, moto: Any, out_prefix: str, seconds: float, events: dict[str, Any]) -> None:
    """Once the first part file lands under ``out_prefix`` (bucket/key), stop the moto server for ``seconds``
    and start it again; records ``parts_before`` and the wall times ``down`` and ``up`` in ``events``."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        fs.invalidate_cache()
        if fs.exists(out_prefix) and any("/part-" in k for k in fs.find(out_prefix)):
            break
        time.sleep(0.05)
    events["parts_before"] = len([k for k in fs.find(out_prefix) if "/part-" in k])
    moto.stop()
    events["down"] = time.time()
    time.sleep(seconds)
    moto.start()
    events["up"] = time.time()


_SEQ = iter(range(1, 1_000_000))


def write_stream(writer: Any, stream_id: str, rows: list[dict[str, Any]]) -> str:
    """Commit one whole stream as a part of its own (as an actor's roller would, for tests of readers)."""
    from pipeline.output.parts import commit_streams

    return commit_streams(writer, "test", next(_SEQ), {stream_id: rows})


ROOT = Path(__file__).resolve().parents[1]


class RayHead:
    """A Ray head as the README starts and stops one: ``scripts/ray_head.sh`` (free ports, its own temp
    dir, a state file under ``state_dir``; returns once the head answers) and ``scripts/ray_stop.sh`` (that
    head only). ``tree`` remembers its processes (the head, its node's, its jobs'), so a test can check that
    the stop left none."""

    def __init__(self, state_dir: Path, token_path: Path, *args: str) -> None:
        import subprocess
        import sys

        self.token = token_path.read_text() if token_path.exists() else os.urandom(24).hex()
        token_path.write_text(self.token)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        self.env.update(
            LONGREAD_VENV=sys.prefix, RAY_AUTH_TOKEN_PATH=str(token_path), LONGREAD_RAY_STATE=str(state_dir)
        )
        self.env.pop("VIRTUAL_ENV", None)
        before = set(state_dir.glob("*.env")) if state_dir.is_dir() else set()
        command = [str(ROOT / "scripts" / "ray_head.sh"), "--num-cpus", "1", "--disable-usage-stats", *args]
        self.started = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=300)
        assert self.started.returncode == 0, self.started.stdout + self.started.stderr
        (state,) = set(state_dir.glob("*.env")) - before
        self.state = dict(
            line.split("=", 1) for line in state.read_text().splitlines() if "=" in line and line[0] != "#"
        )
        self.address = self.state["RAY_ADDRESS"]
        self.gcs = self.state["LONGREAD_RAY_GCS"]
        self.port = int(self.gcs.rsplit(":", 1)[1])
        self.temp_dir = Path(self.state["LONGREAD_RAY_TEMP_DIR"])
        self.tree: dict[int, Any] = {}
        self.remember_tree()

    def client(self, timeout: float = 180.0) -> Any:
        from ray.job_submission import JobSubmissionClient

        deadline = time.monotonic() + timeout
        while True:
            self.remember_tree()
            try:
                client = JobSubmissionClient(self.address, headers={"Authorization": f"Bearer {self.token}"})
                client.list_jobs()
                return client
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1.0)

    def remember_tree(self) -> None:
        import psutil

        with contextlib.suppress(psutil.Error):
            root = psutil.Process(int(self.state["LONGREAD_RAY_PID"]))
            for proc in [root, *root.children(recursive=True)]:
                self.tree.setdefault(proc.pid, proc)

    def alive(self) -> list[int]:
        """Processes of this head still running (zombies waiting for a parent's wait do not count)."""
        import psutil

        out = []
        for proc in self.tree.values():
            with contextlib.suppress(psutil.Error):
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    out.append(proc.pid)
        return out

    def stop(self) -> Any:
        import shutil
        import subprocess

        self.remember_tree()
        stopped = subprocess.run(
            [str(ROOT / "scripts" / "ray_stop.sh"), str(self.port)],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        return stopped
