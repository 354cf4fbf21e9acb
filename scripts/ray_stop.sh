#!/usr/bin/env bash
# Stop a Ray head that scripts/ray_head.sh started -- that head only: not other Ray instances of this user
# on the machine, as `ray stop` would (it stops every Ray process the user runs).
#
#   ./scripts/ray_stop.sh            # the one head started from this checkout (several: name its port)
#   ./scripts/ray_stop.sh 6379       # the head whose GCS port is 6379 (ray_head.sh printed it)
#
# How: the state file .ray_heads/<GCS port>.env names the head's `ray start --block` process, which runs in
# a process group of its own; SIGTERM makes it stop every process of its node (GCS, raylet, dashboard,
# workers, jobs), as Ray does on SIGTERM. Whatever is left after 30 s -- processes of that group, or
# processes whose command line names the head's own temporary folder -- is killed. The state file goes;
# the logs stay in the temporary folder.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
STATE_DIR=${LONGREAD_RAY_STATE:-$ROOT/.ray_heads}
shopt -s nullglob
if [ $# -ge 1 ]; then
  state="$STATE_DIR/${1%.env}.env"
  [ -f "$1" ] && state=$1
  if [ ! -f "$state" ]; then
    echo "error: no head with GCS port ${1} was started by scripts/ray_head.sh here (no $state)" >&2
    exit 2
  fi
else
  states=("$STATE_DIR"/*.env)
  if [ ${#states[@]} -eq 0 ]; then
    echo "error: no Ray head started by scripts/ray_head.sh from this checkout ($STATE_DIR is empty)" >&2
    exit 2
  fi
  if [ ${#states[@]} -gt 1 ]; then
    ports=$(for s in "${states[@]}"; do basename "$s" .env; done | tr '\n' ' ')
    echo "error: several heads were started from this checkout (GCS ports: ${ports% }): name one, e.g. $0 $(basename "${states[0]}" .env)" >&2
    exit 2
  fi
  state=${states[0]}
fi
# shellcheck disable=SC1090
source "$state"
pid=$LONGREAD_RAY_PID
temp=$LONGREAD_RAY_TEMP_DIR

# The processes of this head: its `ray start --block` process group, and any process (a worker, a job)
# whose command line names its temporary folder.
pattern="$(printf '%s' "$temp" | sed 's/[][\\.^$*+?(){}|]/\\&/g')(/| |\$)"  # the folder, not a longer name
head_processes() {
  { pgrep -g "$pid" 2> /dev/null || true; pgrep -f -- "$pattern" 2> /dev/null || true; } | sort -u | grep -vx "$$" || true
}

if kill -0 "$pid" 2> /dev/null && [ "$(ps -o pgid= -p "$pid" | tr -d ' ')" = "$pid" ]; then
  kill -TERM "$pid"
fi
for _ in $(seq 60); do
  [ -z "$(head_processes)" ] && break
  sleep 0.5
done
left=$(head_processes)
if [ -n "$left" ]; then
  echo "ray_stop: killing what did not stop in 30 s: $(echo "$left" | tr '\n' ' ')" >&2
  # shellcheck disable=SC2086
  kill -KILL $left 2> /dev/null || true
fi
rm -f "$state"
echo "Ray head ${LONGREAD_RAY_GCS} stopped (its logs: $temp)"
