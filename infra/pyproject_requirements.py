"""Print requirements from pyproject.toml, one a line, for `pip install -r`.

With no extra named, the project's dependencies; with extras, theirs (an extra that names the project
itself, like ``longread[eval]``, is expanded). infra/Dockerfile installs these before it copies the
sources, so that editing the code reinstalls no dependency and rebuilds no FlashAttention:

    python pyproject_requirements.py pyproject.toml          # [project] dependencies
    python pyproject_requirements.py pyproject.toml gpu      # the `gpu` extra (flash-attn)
"""

from __future__ import annotations

import re
import sys
import tomllib


def requirements(pyproject: dict, extras: list[str]) -> list[str]:
    project = pyproject["project"]
    if not extras:
        return list(project["dependencies"])
    optional = project.get("optional-dependencies", {})
    own = re.compile(rf"^{re.escape(project['name'])}\[([\w,\s-]+)\]\s*$")
    out: list[str] = []
    for extra in extras:
        if extra not in optional:
            raise SystemExit(f"pyproject.toml has no extra {extra!r} (it has {sorted(optional)})")
        for req in optional[extra]:
            match = own.match(req)
            if match:
                out += requirements(pyproject, [e.strip() for e in match.group(1).split(",")])
            else:
                out.append(req)
    return list(dict.fromkeys(out))


def main(argv: list[str]) -> None:
    if not argv:
        raise SystemExit(__doc__)
    with open(argv[0], "rb") as f:
        print("\n".join(requirements(tomllib.load(f), argv[1:])))


if __name__ == "__main__":
    main(sys.argv[1:])
