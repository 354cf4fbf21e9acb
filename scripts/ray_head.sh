#!/usr/bin/env bash
# Start a local Ray head for `ray job submit`, set up as Ray 2.60 and this project need it, beside any other
# Ray on the machine; scripts/ray_stop.sh stops this head and nothing else.
#
#  * Token authentication (RAY_AUTH_MODE=token, Ray's default for new local clusters since 2.59): the
#    head, its workers, the jobs it runs and the `ray job submit` CLI share one token, by default
#    ~/.ray/auth_token (created here when missing; RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH override it).
#    The CLI sends the token only when its own shell has RAY_AUTH_MODE=token: export it there too.
#  * The project's interpreter: Ray runs a job's entrypoint through the shell with the head's
#    environment, so .venv/bin goes first on PATH and `python -m jobs.NAME` is the project's Python with
#    its dependencies (the cluster's nodes are prepared in advance, as Ray recommends for fixed
#    environments; infra/Dockerfile does the same on clusters).
#  * Ports: Ray's fixed defaults (GCS 6379, dashboard 8265, dashboard agent 52365, client server 10001)
#    are used when free; one that another Ray (or anything else) holds is replaced by a free port, said in
#    one line -- two heads on the default ports fail with Ray's "Could not read 'dashboard' from GCS". The
#    ports Ray would pick at random (dashboard agent gRPC, metrics export, runtime env agent) are chosen
#    here too, so that the state file knows them all. A port given in the options below is kept.
#  * Its own temporary folder (--temp-dir /tmp/ray-lr-<user>-<GCS port>: sessions, logs, sockets), and
#    `ray start --block` in a process group of its own; the state file .ray_heads/<GCS port>.env records
#    the addresses, the ports, that folder and the process, for scripts/ray_stop.sh.
#
#   export RAY_AUTH_MODE=token
#   ./scripts/ray_head.sh [more `ray start` options, e.g. --num-cpus 2]   # prints the RAY_ADDRESS to use
#   RAY_ADDRESS=http://127.0.0.1:8265 .venv/bin/ray job submit --working-dir . -- python -m jobs.summarize_books --output "$PWD/output/summarize_books"
#   ./scripts/ray_stop.sh [GCS_PORT]
#
# With --block the script stays in the foreground until the head ends (SIGTERM or Ctrl-C stop it).
#
# LONGREAD_VENV points at another virtual environment than ./.venv; LONGREAD_RAY_STATE another folder for
# the state files than ./.ray_heads; LONGREAD_RAY_START_TIMEOUT the seconds to wait for the head (120).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${LONGREAD_VENV:-$ROOT/.venv}
STATE_DIR=${LONGREAD_RAY_STATE:-$ROOT/.ray_heads}
if [ ! -x "$VENV/bin/python" ] || [ ! -x "$VENV/bin/ray" ]; then
  echo "error: no virtual environment with Ray at $VENV: run ./scripts/setup.sh first (or set LONGREAD_VENV)" >&2
  exit 2
fi
export PATH="$VENV/bin:$PATH"
export RAY_AUTH_MODE=token
if [ -z "${RAY_AUTH_TOKEN:-}" ] && [ -z "${RAY_AUTH_TOKEN_PATH:-}" ]; then
  "$VENV/bin/ray" get-auth-token --generate > /dev/null  # creates ~/.ray/auth_token once, prints it: not here
fi
mkdir -p "$STATE_DIR"

# Choose the ports (Python: a port is free when it can be bound; the defaults first), start
# `ray start --head --block` in a new session, wait until its dashboard answers, write the state file.
exec "$VENV/bin/python" - "$STATE_DIR" "${LONGREAD_RAY_START_TIMEOUT:-120}" "$@" <<'PYTHON'
import fcntl
import getpass
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

state_dir, timeout, extra = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
block = "--block" in extra  # the head always runs under `ray start --block`; here: wait for it too
extra = [a for a in extra if a != "--block"]
# (ray start option, what it is, Ray's default or None for "Ray picks one at random")
PORTS = [
    ("--port", "GCS", 6379),
    ("--dashboard-port", "dashboard", 8265),
    ("--dashboard-agent-listen-port", "dashboard agent", 52365),
    ("--ray-client-server-port", "client server", 10001),
    ("--dashboard-agent-grpc-port", "dashboard agent gRPC", None),
    ("--metrics-export-port", "metrics export", None),
    ("--runtime-env-agent-port", "runtime env agent", None),
]


def option_value(option: str) -> str | None:
    """The value of a `ray start` option given to this script (``--x V`` or ``--x=V``), if any."""
    for i, arg in enumerate(extra):
        if arg == option and i + 1 < len(extra):
            return extra[i + 1]
        if arg.startswith(option + "="):
            return arg.split("=", 1)[1]
    return None


def free(port: int) -> bool:
    for host in ("0.0.0.0", "127.0.0.1"):
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                return False
    return True


def any_free(taken: set[int]) -> int:
    while True:
        with socket.socket() as sock:
            sock.bind(("0.0.0.0", 0))
            port = int(sock.getsockname()[1])
        if port not in taken and not 10002 <= port <= 19999:  # not in Ray's worker port range
            return port


# One head at a time chooses its ports and binds them: two started together would choose the same ones.
lock = open(f"/tmp/ray-lr-{getpass.getuser()}.lock", "w")
fcntl.flock(lock, fcntl.LOCK_EX)
ports: dict[str, int] = {}
args: list[str] = []
for option, what, default in PORTS:
    value = option_value(option)
    port = int(value) if value is not None else None
    if port is None:
        if default is not None and free(default) and default not in ports.values():
            port = default
        else:
            port = any_free(set(ports.values()))
            if default is not None:
                print(f"ray_head: port {default} ({what}) is in use, by another Ray or another program: "
                      f"using {port}", file=sys.stderr)
        args += [option, str(port)]
    ports[what] = port
gcs, dashboard = ports["GCS"], ports["dashboard"]
temp = option_value("--temp-dir")
if temp is None:  # short: Ray's Unix socket paths under it must stay within 107 bytes
    temp = f"/tmp/ray-lr-{getpass.getuser()}-{gcs}"
    args += ["--temp-dir", temp]
os.makedirs(temp, exist_ok=True)
log_path = os.path.join(temp, "ray_head.log")
command = ["ray", "start", "--head", "--block", *args, *extra]
with open(log_path, "ab") as log:
    head = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)


def fail(why: str) -> None:
    tail = open(log_path, encoding="utf-8", errors="replace").read().splitlines()[-15:]
    print(f"error: the Ray head did not start ({why}); its log: {log_path}\n  " + "\n  ".join(tail),
          file=sys.stderr)
    if head.poll() is None:
        head.terminate()
    sys.exit(1)


def answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return True
    except OSError:
        return False


def dashboard_answers(url: str) -> bool:
    try:
        urllib.request.urlopen(f"{url}/api/version", timeout=2).read()
    except urllib.error.HTTPError:  # it answers (token authentication may refuse the request): it is up
        return True
    except OSError:
        return False
    return True


# Up: the dashboard answers, and the dashboard agent (which `ray job submit` needs) holds its port -- until
# then another head started beside this one would take that port for free (the lock makes them take turns).
url = f"http://127.0.0.1:{dashboard}"
agent = ports["dashboard agent"]
deadline = time.monotonic() + timeout
while not (dashboard_answers(url) and answers(agent)):
    if head.poll() is not None:
        fail(f"`ray start` exited with status {head.returncode}")
    if time.monotonic() > deadline:
        fail(f"no answer from its dashboard at {url} and its agent on port {agent} within {timeout:.0f} s")
    time.sleep(0.5)
fcntl.flock(lock, fcntl.LOCK_UN)

state = os.path.join(state_dir, f"{gcs}.env")
listed = " ".join(f"{what.replace(' ', '_')}={port}" for what, port in ports.items())
with open(state, "w", encoding="utf-8") as out:
    out.write(
        f"# the Ray head scripts/ray_head.sh started; scripts/ray_stop.sh {gcs} stops it\n"
        f"RAY_ADDRESS={url}\n"
        f"LONGREAD_RAY_GCS=127.0.0.1:{gcs}\n"
        f"LONGREAD_RAY_PID={head.pid}\n"
        f"LONGREAD_RAY_TEMP_DIR={temp}\n"
        f"LONGREAD_RAY_LOG={log_path}\n"
        f"LONGREAD_RAY_PORTS='{listed}'\n"
    )
print(f"Ray head up: export RAY_ADDRESS={url} for `ray job submit` (or --address {url}); "
      f"`ray status --address 127.0.0.1:{gcs}`; stop it with scripts/ray_stop.sh {gcs} "
      f"(state {state}, logs {temp})", flush=True)
if block:  # in the foreground (a container's command, a terminal): SIGTERM or Ctrl-C stops the head
    import signal

    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda *_: head.terminate())
    status = head.wait()
    os.remove(state)
    sys.exit(status)
PYTHON
