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
    # YAML 1.1 (PyYAML) reads ``2e-3`` (no dot) as the *string* "2e-3": turn such strings into the float the
    # field wants, or fail naming the key, instead of a TypeError deep inside an optimiser.
    for f in fields(cls):
        annotation = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        kinds = {part.strip() for part in annotation.split("|")}
        if f.name in d and isinstance(d[f.name], str) and "float" in kinds and "str" not in kinds:
            try:
                d[f.name] = float(d[f.name])
            except ValueError:
                raise ValueError(f"{where}: {f.name} must be a number, got {d[f.name]!r}") from None
    return cls(**d)
