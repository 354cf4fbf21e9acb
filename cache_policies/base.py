"""The contract every KV-cache policy implements.

A policy decides *which* cached tokens survive; it never touches key/value tensors. The engine's cache
(``longread.cache.BatchCache``) owns the preallocated buffers, appends each chunk, and after every chunk
asks ``policy.select(n)`` for the slots to keep. The answer is an index tensor into the current cache
(ascending slot order, so relative order is preserved), in one of three shapes:

* ``(T,)``       the same slots for every layer and head (full, StreamingLLM);
* ``(L, T)``     per layer, shared by the layer's KV heads (LaCache's ladder);
* ``(L, H, T)``  per layer and KV head (Cascading).

Every layer and head keeps the same count ``T`` so the cache stays one tensor per layer, and ``T`` never
exceeds ``budget``. ``None`` means "keep everything" (nothing to evict yet).

Policies whose choice depends on attention (``needs_scores``) receive per-chunk column sums of the
attention probabilities of every layer through ``observe`` before ``select`` is called; ``query_weights``
says how much each query of a chunk counts in those sums.

Parameters are declared once, as annotated class attributes with defaults (dataclass fields, the way
kvpress's presses declare theirs); every subclass is made a dataclass, so its constructor takes them by
keyword or in declaration order, the base's ``budget`` and ``sink`` first::

    class LaCache(CachePolicy):
        name = "lacache"
        span: int = 15
        overlap: int = 0

From the declarations the base class derives the constructor's checks, ``params()``, ``describe()`` and
the names ``make_policy`` accepts. The annotation is the type check (``int``: a whole number, ``float``: any
number, ``Literal[...]``: one of its values, ``str``, ``bool``; ``X | None`` also takes None); ``param(...)``
adds a range, a rule relating the parameter to others, and the words of the messages, which name the
parameter and the fix. Checks run class by class, the base's parameters first: types, then values and
rules. Checks that need the model's geometry run in ``bind``.

One policy object holds one stream's state. The engine builds one per stream from a bound prototype
(``copy.deepcopy`` then ``reset``), copies it for snapshots and forks, and persists it for checkpoints
through ``state_dict`` / ``load_state_dict`` (plain tensors and Python values only, so a checkpoint loads
with ``torch.load(weights_only=True)``). Attributes whose names start with ``_`` are derived (caches,
geometry from ``bind``) and are not part of the state.
"""

from __future__ import annotations

import types
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar, Literal, dataclass_transform

import torch


class PolicyConfigError(ValueError):
    """A policy was given parameters it cannot honour; the message names the parameter and the fix."""


# --------------------------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class Param:
    """What a declared parameter accepts beyond its annotated type, and how its messages read."""

    #: ``int``: the smallest value accepted
    minimum: int | None = None
    #: ``float``: the open interval of values accepted
    between: tuple[float, float] | None = None
    #: the requirement in words, where the derived one (``>= 1``, ``in (0, 1)``, ``'a' or 'b'``) reads badly
    must: str = ""
    #: why the range is what it is: appended to a range error in parentheses
    note: str = ""
    #: appended to a type error in parentheses (for ``int`` the default is an example spec)
    hint: str = ""
    #: relates the value to other parameters: the problem and its fix in words, or None when it holds
    rule: Callable[[Any], str | None] | None = None
    #: accepted (so every policy takes the same arguments) but ignored: the attribute keeps the default
    ignored: bool = False


def param(
    *,
    default: Any = MISSING,
    minimum: int | None = None,
    between: tuple[float, float] | None = None,
    must: str = "",
    note: str = "",
    hint: str = "",
    rule: Callable[[Any], str | None] | None = None,
    ignored: bool = False,
) -> Any:
    """A parameter with more to say than its type and default (see ``Param``); without a ``default`` it is
    required. E.g. ``cascades: int = param(default=4, minimum=1, note="1 = StreamingLLM")``."""
    spec = Param(minimum, between, must, note, hint, rule, ignored)
    return field(default=default, metadata={"param": spec})


@dataclass(frozen=True)
class Parameter:
    """A declared parameter as its class resolved it: what the constructor checks, ``params()`` lists."""

    name: str
    #: ``"int"`` (a whole number), ``"float"`` (any number), ``"str"``, ``"bool"`` or ``"choice"``
    kind: str
    #: None is accepted too (and skips the checks)
    optional: bool
    #: the values a ``Literal`` annotation allows
    choices: tuple[Any, ...]
    #: the default value, ``dataclasses.MISSING`` when the parameter is required
    default: Any
    spec: Param
    #: the class that declares it (checks run class by class, the base's first)
    owner: type

    def type_error(self, policy: str, value: Any) -> str | None:
        """What is wrong when ``value`` has the wrong type, else None."""
        got = type(value).__name__
        hint = f" ({self.spec.hint})" if self.spec.hint else ""
        if self.kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
            example = self.spec.hint or f"e.g. {policy}:{self.name}=4"
            return f"{self.name}={value!r} must be a whole number, got {got} ({example})."
        if self.kind == "float" and (isinstance(value, bool) or not isinstance(value, int | float)):
            within = f" in {self._interval()}" if self.spec.between is not None else ""
            return f"{self.name}={value!r} must be a number{within}, got {got}{hint}."
        if self.kind in ("str", "bool") and not isinstance(value, str if self.kind == "str" else bool):
            return f"{self.name}={value!r} must be a {self.kind}, got {got}{hint}."
        return None

    def value_error(self, instance: Any, value: Any) -> str | None:
        """What is wrong when ``value`` (of the right type) is out of range or breaks the rule, else None."""
        spec = self.spec
        if spec.minimum is not None and value < spec.minimum:
            return self._must(value, f">= {spec.minimum}")
        if spec.between is not None and not spec.between[0] < value < spec.between[1]:
            return self._must(value, f"in {self._interval()}")
        if self.kind == "choice" and value not in self.choices:
            return self._must(repr(value), " or ".join(map(repr, self.choices)))
        return spec.rule(instance) if spec.rule is not None else None

    def _must(self, shown: Any, requirement: str) -> str:
        note = f" ({self.spec.note})" if self.spec.note else ""
        return f"{self.name}={shown} must be {self.spec.must or requirement}{note}."

    def _interval(self) -> str:
        assert self.spec.between is not None
        low, high = self.spec.between
        return f"({low:g}, {high:g})"


_KINDS: dict[Any, str] = {int: "int", float: "float", str: "str", bool: "bool"}


def _resolve(cls: type) -> tuple[Parameter, ...]:
    """``cls``'s dataclass fields as ``Parameter``s, from their annotations and ``param`` specs (at class
    creation, so that a parameter of a type the checks do not know fails at import, not in a run)."""
    hints = typing.get_type_hints(cls)
    resolved = []
    for f in fields(cls):
        hint, optional = hints[f.name], False
        if typing.get_origin(hint) in (types.UnionType, typing.Union):
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            if len(args) != 1:
                raise TypeError(f"{cls.__name__}.{f.name}: a parameter has one type (or that type | None)")
            hint, optional = args[0], True
        choices: tuple[Any, ...] = ()
        if typing.get_origin(hint) is Literal:
            kind, choices = "choice", typing.get_args(hint)
        elif hint in _KINDS:
            kind = _KINDS[hint]
        else:
            raise TypeError(
                f"{cls.__name__}.{f.name}: a parameter is an int, float, str, bool or Literal[...] "
                f"(or one of those | None), not {hint!r}"
            )
        owner = next(c for c in cls.__mro__ if f.name in vars(c).get("__annotations__", {}))
        spec = f.metadata.get("param", Param())
        resolved.append(Parameter(f.name, kind, optional, choices, f.default, spec, owner))
    return tuple(resolved)


def _room_for_recent(policy: CachePolicy) -> str | None:
    """``sink``'s rule: the budget keeps more than the sinks."""
    if policy.budget is not None and policy.sink >= policy.budget:
        return (
            f"sink={policy.sink} leaves no room for recent tokens in budget={policy.budget}; "
            f"use sink < budget (typically 4)."
        )
    return None


@dataclass_transform(eq_default=False, field_specifiers=(param,))
class Declared:
    """A class whose annotated attributes are its parameters: each subclass is made a dataclass of them
    (eq and repr left alone) and resolves them to ``parameters`` when it is created."""

    #: The declared parameters in constructor order.
    parameters: ClassVar[tuple[Parameter, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        dataclass(eq=False, repr=False)(cls)
        cls.parameters = _resolve(cls)

    @classmethod
    def parameter_names(cls) -> tuple[str, ...]:
        """What the constructor accepts."""
        return tuple(p.name for p in cls.parameters)

    def _check_parameters(self, label: str) -> None:
        """Set ignored parameters to their defaults, and check the others: each declaring class in turn,
        the base's first, every type, then every value and rule (so no message reports a range for a value
        of the wrong type, nor a rule over unchecked values). Messages start with ``label``."""
        for p in self.parameters:
            if p.spec.ignored:
                setattr(self, p.name, p.default)
        for owner in reversed(type(self).__mro__):
            given = [(p, getattr(self, p.name)) for p in self.parameters if p.owner is owner]
            checked = [(p, v) for p, v in given if not p.spec.ignored and not (p.optional and v is None)]
            for p, value in checked:
                if (problem := p.type_error(label, value)) is not None:
                    raise PolicyConfigError(f"{label}: {problem}")
            for p, value in checked:
                if (problem := p.value_error(self, value)) is not None:
                    raise PolicyConfigError(f"{label}: {problem}")


# --------------------------------------------------------------------------------------- the contract
class CachePolicy(Declared, ABC):
    """The contract (see the module docstring); every subclass is a dataclass of its parameters."""

    name: ClassVar[str]
    #: True when ``select`` uses attention scores passed through ``observe``.
    needs_scores: ClassVar[bool] = False
    #: False only for the full cache, which keeps everything.
    needs_budget: ClassVar[bool] = True

    #: The tokens the policy keeps; None only where ``needs_budget`` is False.
    budget: int | None = param(minimum=1, must="a positive number of tokens")
    #: The stream's first tokens, always kept (attention sinks).
    sink: int = param(default=4, minimum=0, rule=_room_for_recent)

    def __post_init__(self) -> None:
        """Check the parameters, then start with an empty state. Subclasses that add state extend this."""
        if self.budget is None and self.needs_budget:
            raise PolicyConfigError(
                f"{self.name}: needs a budget (the tokens it keeps), e.g. policy.budget: 512 in the config, "
                f"--budget 512, or {self.name}:budget=512."
            )
        self._check_parameters(self.name)
        self.num_layers = 0
        self.num_kv_heads = 0
        self.reset()

    def bind(self, num_layers: int, num_kv_heads: int) -> None:
        """Attach to a model's geometry; policies that depend on it validate here. Resets state."""
        self.num_layers = num_layers
        self.num_kv_heads = num_kv_heads
        self.reset()

    def reset(self) -> None:
        """Forget everything about the current stream (a new stream starts at position 0)."""
        self.compactions = 0

    @property
    def bounded(self) -> bool:
        return self.budget is not None

    @abstractmethod
    def select(self, n: int, positions: torch.Tensor) -> torch.Tensor | None:
        """Slots to keep when the cache holds ``n`` tokens.

        ``positions`` is ``(L, H, n)``: the original stream position of every cached slot. Returns ``None``
        to keep all, or an ascending index tensor of shape ``(T,)``, ``(L, T)`` or ``(L, H, T)``.
        """

    def query_weights(self, n_queries: int, device: torch.device) -> torch.Tensor | None:
        """How much each of a chunk's ``n_queries`` queries counts in the column sums that ``observe``
        receives: ``(n_queries,)`` float32 on ``device``, or None (the default) for all ones. Only asked
        of ``needs_scores`` policies."""
        return None

    def observe(self, scores: torch.Tensor, n_new: int) -> None:
        """Attention column sums ``(L, H_q, n)`` of the chunk just processed, each query weighted by
        ``query_weights``; only for ``needs_scores``."""

    def state_dict(self) -> dict[str, Any]:
        """The stream's state (see the module docstring)."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            if key.startswith("_") or not hasattr(self, key):
                raise KeyError(f"{self.name}: {key!r} is not part of this policy's state")
            setattr(self, key, value)

    def params(self) -> dict[str, Any]:
        """The policy's parameters, for result rows and tables: every declared one it does not ignore, and
        ``budget`` always (None: unbounded)."""
        return {
            p.name: getattr(self, p.name) for p in self.parameters if p.name == "budget" or not p.spec.ignored
        }

    def stats(self) -> dict[str, Any]:
        """Policy-level counters a caller can log (the cache adds per-layer contents)."""
        return {"compactions": self.compactions}

    def describe(self) -> str:
        extra = ",".join(f"{k}={v}" for k, v in self.params().items() if k not in ("budget",))
        return f"{self.name}(budget={self.budget}{',' if extra else ''}{extra})"

    def __repr__(self) -> str:
        return self.describe()
