"""Bounded KV-cache policies behind one interface (see ``cache_policies.base``), in an explicit registry.

``make_policy(name, **params)`` builds a registered policy; ``from_spec("lacache:span=15,overlap=0",
budget=512, sink=4)`` builds one from the spec strings that command lines and config files use (the one
place that parses them: ``parse_spec``).
"""

from __future__ import annotations

import json
import re
from typing import Any

from cache_policies.base import CachePolicy, PolicyConfigError
from cache_policies.cascading import Cascading
from cache_policies.full import FullCache
from cache_policies.lacache import LaCache
from cache_policies.streaming_llm import StreamingLLM

POLICIES: dict[str, type[CachePolicy]] = {
    FullCache.name: FullCache,
    StreamingLLM.name: StreamingLLM,
    LaCache.name: LaCache,
    Cascading.name: Cascading,
}


def make_policy(name: str, **params: Any) -> CachePolicy:
    """Build a registered policy by name; unknown names and parameters get an error that lists the options."""
    try:
        cls = POLICIES[name]
    except KeyError:
        raise PolicyConfigError(f"unknown cache policy {name!r}; choose one of {sorted(POLICIES)}.") from None
    unknown = [key for key in params if key not in cls.parameter_names()]
    if unknown:
        raise PolicyConfigError(
            f"{name}: unexpected keyword argument {unknown[0]!r}; its parameters are "
            f"{', '.join(cls.parameter_names())}. Check the policy's parameters in the README."
        )
    try:
        return cls(**params)
    except TypeError as exc:
        raise PolicyConfigError(f"{name}: {exc}. Check the policy's parameters in the README.") from None


# A spec's values read as the YAML scalars they look like (what ``yaml.safe_load`` gives for each of these
# forms), so ``--policy cascading:beta=0.9999`` and ``params: {beta: 0.9999}`` in a config file agree. YAML
# 1.1's other forms (yes/no/on/off, 0x1f, 017, 1_000, 1:30, .inf) stay text here.
_INT = re.compile(r"[-+]?(?:0|[1-9][0-9]*)")
_FLOAT = re.compile(r"[-+]?[0-9]+\.[0-9]*(?:[eE][-+][0-9]+)?|\.[0-9]+(?:[eE][-+][0-9]+)?")  # with a dot
_WORDS: dict[str, Any] = {
    **dict.fromkeys(("true", "True", "TRUE"), True),
    **dict.fromkeys(("false", "False", "FALSE"), False),
    **dict.fromkeys(("", "~", "null", "Null", "NULL", "none", "None", "NONE"), None),
}
# What YAML would read as something other than a plain string: a collection, an anchor, alias or tag, a
# block scalar, a directive, a comment, a mapping. Refused rather than read differently.
_STRUCTURE = re.compile(r"[\[\]{}&*!|>%@`#]|[-?:](?:\s|$)|.*(?::\s|:$|\s#)", re.DOTALL)


def parse_value(text: str) -> Any:
    """One spec value: an int (``15``, ``-3``), a float (``0.9999``, ``1.0e-4``: with a dot, so ``1e-4`` is
    text, as in YAML), true/false, null (also ``none``, or nothing), a quoted string (``'a'`` with ``''``
    for a quote, ``"a"`` with JSON escapes), else the text itself. Raises ``ValueError`` for what YAML would
    not read as one scalar (``[1``, ``a: b``, ``'a``)."""
    text = text.strip()
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    if text in _WORDS:
        return _WORDS[text]
    if text[:1] == "'" and len(text) > 1 and text[-1] == "'" and "'" not in text[1:-1].replace("''", ""):
        return text[1:-1].replace("''", "'")
    if text[:1] == '"':
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            raise ValueError(text) from None
        if isinstance(value, str):
            return value
        raise ValueError(text)
    if text[:1] == "'" or _STRUCTURE.match(text):
        raise ValueError(text)
    return text


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"lacache:span=15,overlap=0"`` -> ``("lacache", {"span": 15, "overlap": 0})`` (see ``parse_value``).

    Only the syntax is checked here; ``make_policy`` / ``from_spec`` check the name and the parameters.
    """
    name, _, rest = spec.partition(":")
    params: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise PolicyConfigError(
                f"policy spec {spec!r}: {item!r} is not key=value (e.g. lacache:span=15,overlap=0)"
            )
        try:
            params[key.strip()] = parse_value(value)
        except ValueError:
            raise PolicyConfigError(
                f"policy spec {spec!r}: the value {value!r} of {key.strip()!r} is not valid YAML; quote or "
                "fix it (e.g. lacache:span=15,overlap=0)."
            ) from None
    return name.strip(), params


def check_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``parse_spec``, and the name must be registered (for command lines that build policies later)."""
    name, params = parse_spec(spec)
    if name not in POLICIES:
        raise PolicyConfigError(
            f"policy spec {spec!r}: unknown cache policy {name!r}; choose one of {sorted(POLICIES)}"
        )
    return name, params


def policy_kwargs(name: str, params: dict[str, Any], *, budget: int | None, sink: int = 4) -> dict[str, Any]:
    """The constructor arguments of policy ``name``: ``full`` takes no budget or sink."""
    if name == FullCache.name:
        return dict(params)
    return {"budget": budget, "sink": sink, **params}


def from_spec(spec: str, *, budget: int | None = None, sink: int = 4, **params: Any) -> CachePolicy:
    """Build a policy from a spec; ``budget`` and ``sink`` apply to every policy but ``full``.

    Parameters in the spec win over keyword ``params`` (a spec is what a user typed last).
    """
    name, spec_params = parse_spec(spec)
    return make_policy(name, **policy_kwargs(name, {**params, **spec_params}, budget=budget, sink=sink))


__all__ = [
    "POLICIES",
    "CachePolicy",
    "Cascading",
    "FullCache",
    "LaCache",
    "PolicyConfigError",
    "StreamingLLM",
    "check_spec",
    "from_spec",
    "make_policy",
    "parse_spec",
    "parse_value",
    "policy_kwargs",
]
