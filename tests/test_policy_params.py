"""Policy parameters are declared once (annotated fields); the checks, ``params()``, ``describe()`` and the
names ``make_policy`` accepts derive from them. Spec values parse like the YAML scalars they look like."""

from __future__ import annotations

from typing import Literal

import pytest
import torch
import yaml

from cache_policies import POLICIES, PolicyConfigError, make_policy, parse_spec, parse_value
from cache_policies.base import CachePolicy, param


def _wide_enough(policy: Toy) -> str | None:
    return (
        None if policy.width <= policy.budget - policy.sink else f"width={policy.width} is over budget - sink"
    )


class Toy(CachePolicy):
    """A policy as a newcomer would write one: parameters are annotated fields."""

    name = "toy"
    width: int = param(default=2, minimum=1, rule=_wide_enough)
    decay: float = param(default=0.5, between=(0, 1), note="half-life", hint="write 0.5")
    mode: Literal["a", "b"] = "a"
    label: str | None = None
    flag: bool = False

    def select(self, n: int, positions: torch.Tensor) -> torch.Tensor | None:
        return None


def test_a_declaration_is_the_constructor_params_and_describe():
    toy = Toy(16, sink=2, decay=0.25, mode="b")
    assert Toy.parameter_names() == ("budget", "sink", "width", "decay", "mode", "label", "flag")
    assert toy.params() == {
        "budget": 16, "sink": 2, "width": 2, "decay": 0.25, "mode": "b", "label": None, "flag": False
    }  # fmt: skip
    assert toy.describe() == "toy(budget=16,sink=2,width=2,decay=0.25,mode=b,label=None,flag=False)"
    assert toy.state_dict() == {**toy.params(), "num_layers": 0, "num_kv_heads": 0, "compactions": 0}


@pytest.mark.parametrize(
    "params,message",
    [
        ({"width": 2.0}, r"toy: width=2.0 must be a whole number, got float \(e.g. toy:width=4\)\.$"),
        ({"width": 0}, r"toy: width=0 must be >= 1\.$"),
        ({"width": 15}, r"toy: width=15 is over budget - sink$"),
        ({"decay": "x"}, r"toy: decay='x' must be a number in \(0, 1\), got str \(write 0\.5\)\.$"),
        ({"decay": 1}, r"toy: decay=1 must be in \(0, 1\) \(half-life\)\.$"),
        ({"mode": "c"}, r"toy: mode='c' must be 'a' or 'b'\.$"),
        ({"label": 3}, r"toy: label=3 must be a str, got int\.$"),
        ({"flag": 1}, r"toy: flag=1 must be a bool, got int\.$"),
        # the base's parameters are checked first, then the policy's: types, then values and rules
        ({"sink": 16, "width": 2.0}, r"toy: sink=16 leaves no room"),
        ({"width": 0, "decay": "x"}, r"toy: decay='x' must be a number"),
    ],
)
def test_checks_derive_from_the_declaration(params, message):
    with pytest.raises(PolicyConfigError, match=message):
        Toy(**{"budget": 16, **params})


def test_a_parameter_of_an_unchecked_type_fails_at_class_creation():
    with pytest.raises(TypeError, match=r"Bad\.sizes: a parameter is an int, float, str, bool or Literal"):

        class Bad(CachePolicy):
            name = "bad"
            sizes: list[int] = param(default=None)

            def select(self, n, positions):
                return None


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_make_policy_names_the_parameters_it_accepts(name):
    names = ", ".join(POLICIES[name].parameter_names())
    with pytest.raises(
        PolicyConfigError, match=rf"^{name}: unexpected keyword argument 'spam'; .* {names}\."
    ):
        make_policy(name, budget=48, spam=1)


def test_each_policy_declares_its_parameters_once():
    assert {name: cls.parameter_names() for name, cls in POLICIES.items()} == {
        "full": ("budget", "sink"),
        "streaming_llm": ("budget", "sink"),
        "lacache": ("budget", "sink", "span", "overlap"),
        "cascading": ("budget", "sink", "cascades", "beta", "reduce"),
    }
    full = make_policy("full", budget=512, sink=2)  # accepted, ignored: nothing is evicted
    assert (full.budget, full.sink, full.params(), full.describe()) == (
        None,
        0,
        {"budget": None},
        "full(budget=None)",
    )


def test_state_is_the_same_attributes_as_before():
    """Checkpoints written before the declarations load: the state keys did not change."""
    expected = {
        "full": set(),
        "streaming_llm": set(),
        "lacache": {"span", "overlap", "block", "keep", "frees", "cursor", "sweeps"},
        "cascading": {"cascades", "beta", "reduce", "seen", "length", "counts", "scores", "pending"},
    }
    for name, extra in expected.items():
        policy = make_policy(name, **({} if name == "full" else {"budget": 48, "sink": 4}))
        policy.bind(16, 2)
        base = {"budget", "sink", "num_layers", "num_kv_heads", "compactions"}
        assert set(policy.state_dict()) == base | extra, name


# ------------------------------------------------------------------ spec values
#: Values that read as YAML reads them (``yaml.safe_load``), type included.
AS_YAML = [
    "15", "0", "-3", "+5", " 15 ", "0.9999", "1.", ".5", "1.0e-4", "1.5E+3", "-2.5", "1e-4", "1.0e4", "-.5",
    "true", "True", "FALSE", "null", "Null", "~", "", "max", "median", "'max'", '"max"', "'a''b'", "''",
    '"a\\"b"', '"\\u0041"', "a'b", "x y", "http://x", "a:b", "-x", "tRuE", "NaN", "5%", "a#b",
    "[1", "{a", "*a", "%x", "@x", "`x", "'a", "'a'b'", '"a', '"a"b',
]  # fmt: skip
#: Where the spec reader departs from YAML 1.1, on purpose: its other number and boolean forms stay text,
#: ``none`` is null, and what YAML would read as a collection, comment, anchor, tag or mapping is refused.
NOT_AS_YAML = {
    "1_000": "1_000", "0x1f": "0x1f", "017": "017", "1:30": "1:30", "yes": "yes", "off": "off",
    ".inf": ".inf", "none": None, "None": None,
    "[1]": ValueError, "{}": ValueError, "&a": ValueError, "!!int 3": ValueError, "|": ValueError,
    "#x": ValueError, "a: b": ValueError, "a:": ValueError, "a #c": ValueError, "- x": ValueError,
    "-": ValueError, "? x": ValueError, '"\\x41"': ValueError,
}  # fmt: skip


def _read(read, text):
    try:
        value = read(text)
    except (ValueError, yaml.YAMLError):
        return ValueError
    return type(value), value


@pytest.mark.parametrize("text", AS_YAML)
def test_spec_values_read_as_yaml(text):
    assert _read(parse_value, text) == _read(yaml.safe_load, text)


@pytest.mark.parametrize("text,expected", NOT_AS_YAML.items())
def test_spec_values_that_depart_from_yaml(text, expected):
    assert _read(parse_value, text) == (expected if expected is ValueError else (type(expected), expected))
    assert _read(yaml.safe_load, text) != _read(parse_value, text)


def test_parse_spec():
    assert parse_spec("cascading: cascades = 2, beta=0.5 ,reduce=mean") == (
        "cascading",
        {"cascades": 2, "beta": 0.5, "reduce": "mean"},
    )
    assert parse_spec("lacache") == ("lacache", {})
    with pytest.raises(PolicyConfigError, match=r"'span' is not key=value"):
        parse_spec("lacache:span")
    with pytest.raises(
        PolicyConfigError, match=r"the value 'a: b' of 'x' is not valid YAML; quote or fix it"
    ):
        parse_spec("lacache:x=a: b")
