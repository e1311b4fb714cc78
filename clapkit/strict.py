"""Dataclasses from dicts that reject unknown keys: a misspelt parameter must fail, not be ignored."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Mapping, TypeVar

T = TypeVar("T")


def strict_from_dict(cls: type[T], d: Mapping[str, Any] | None, where: str) -> T:
    """``cls(**d)``, or a ValueError naming ``where``, the unknown keys and the known ones."""
    d = dict(d or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
    return cls(**d)
