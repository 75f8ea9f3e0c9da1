"""Settings dictionaries (Kedro parameters, Flower messages) into frozen dataclasses."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import fields
from typing import Any, TypeVar

T = TypeVar("T")


def from_mapping(cls: type[T], values: Mapping[str, Any] | None, *, label: str | None = None,
                 tuples: Iterable[str] = (), noun: str = "keys") -> T:
    """``cls(**values)`` with YAML lists turned into tuples for the fields named in ``tuples``.

    With ``label`` (settings a user writes) an unknown key is an error naming it and the known ones;
    without (model specs, which travel with their neighbours' keys) unknown keys are ignored."""
    values = dict(values or {})
    known = {f.name for f in fields(cls)}
    unknown = set(values) - known
    if unknown and label:
        raise ValueError(f"{label}: unknown {noun} {sorted(unknown)}; known are {sorted(known)}")
    tuples = set(tuples)
    return cls(**{k: tuple(v) if k in tuples else v for k, v in values.items() if k in known})
