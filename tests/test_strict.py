"""Params blocks -> dataclasses: unknown keys fail, numbers written the YAML-1.1 way are still numbers."""

from dataclasses import dataclass

import pytest
import yaml

from clapkit.strict import strict_from_dict


@dataclass
class Block:
    lr: float = 1.0e-3
    clip: float | None = 1.0
    name: str = "x"


def test_unknown_key_is_named():
    with pytest.raises(ValueError, match=r"params.yaml train: unknown key\(s\) \['lrr'\]"):
        strict_from_dict(Block, {"lrr": 1.0}, "params.yaml train")


def test_exponent_without_a_dot_becomes_the_float_yaml_1_1_loses():
    block = yaml.safe_load("lr: 2e-3\nclip: 5e-1\nname: 1e3")
    assert block["lr"] == "2e-3"  # PyYAML's reading, the reason for the conversion
    b = strict_from_dict(Block, block, "params.yaml train")
    assert b.lr == 0.002 and b.clip == 0.5 and b.name == "1e3"  # a str field keeps its string


def test_a_non_number_for_a_float_field_names_the_key():
    with pytest.raises(ValueError, match="params.yaml train: lr must be a number, got 'fast'"):
        strict_from_dict(Block, {"lr": "fast"}, "params.yaml train")
