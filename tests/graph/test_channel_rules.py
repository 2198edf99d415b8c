"""Contract tests over the rule registry."""

from __future__ import annotations

import pytest
import torch

from slimmer.errors import ConfigError
from slimmer.graph.rules import RULES, register


@pytest.mark.parametrize("name", [n for n in RULES.names() if n != "getitem"])
def test_every_rule_names_a_real_aten_op(name: str) -> None:
    namespace, op, overload = name.split(".")
    assert namespace == "aten"
    assert overload in getattr(torch.ops.aten, op).overloads()


def test_registering_a_rule_twice_raises() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register("aten.conv2d.default")(lambda ctx: None)


def test_unknown_rule_name_raises_with_suggestion() -> None:
    with pytest.raises(ConfigError, match="aten.conv2d.default"):
        RULES.get("aten.conv2d.defualt")
