"""Policy parameters are declared once (annotated fields); the checks, ``params()``, ``describe()`` and the
names ``make_policy`` accepts derive from them."""

from __future__ import annotations

from typing import Literal

import pytest
import torch

from cache_policies import POLICIES, PolicyConfigError, make_policy
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
