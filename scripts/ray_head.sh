#!/usr/bin/env bash
# Start a local Ray head for `ray job submit`, set up as Ray 2.60 and this project need it:
#
#  * Token authentication (RAY_AUTH_MODE=token, Ray's default for new local clusters since 2.59): the
#    head, its workers, the jobs it runs and the `ray job submit` CLI share one token, by default
#    ~/.ray/auth_token (created here when missing; RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH override it).
#    The CLI sends the token only when its own shell has RAY_AUTH_MODE=token: export it there too.
#  * The project's interpreter: Ray runs a job's entrypoint through the shell with the head's
#    environment, so .venv/bin goes first on PATH and `python -m jobs.NAME` is the project's Python with
#    its dependencies (the cluster's nodes are prepared in advance, as Ray recommends for fixed
#    environments; infra/Dockerfile does the same on clusters).
#
#   export RAY_AUTH_MODE=token
#   ./scripts/ray_head.sh [more `ray start` options, e.g. --num-cpus 2]
#   .venv/bin/ray job submit --working-dir . -- python -m jobs.summarize_books --output "$PWD/output/summarize_books"
#   .venv/bin/ray stop
#
# LONGREAD_VENV points at another virtual environment than ./.venv.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${LONGREAD_VENV:-$ROOT/.venv}
if [ ! -x "$VENV/bin/python" ] || [ ! -x "$VENV/bin/ray" ]; then
  echo "error: no virtual environment with Ray at $VENV: run ./scripts/setup.sh first (or set LONGREAD_VENV)" >&2
  exit 2
fi
export PATH="$VENV/bin:$PATH"
export RAY_AUTH_MODE=token
if [ -z "${RAY_AUTH_TOKEN:-}" ] && [ -z "${RAY_AUTH_TOKEN_PATH:-}" ]; then
  "$VENV/bin/ray" get-auth-token --generate > /dev/null  # creates ~/.ray/auth_token once, prints it: not here
fi
exec "$VENV/bin/ray" start --head "$@"
