"""File helpers shared by the dataset classes: existence checks and atomic writes."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from fedrs.errors import InputError


def require_file(path: str | os.PathLike, expected: str) -> Path:
    """Return ``path`` as a Path, or raise naming it and the layout that was expected there."""
    path = Path(path)
    if not path.is_file():
        where = "a directory" if path.is_dir() else "missing"
        raise InputError(f"Input file {path} is {where}; expected {expected}.")
    return path


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``target``; move it over ``target`` only if the block succeeds.

    A run interrupted mid-write therefore leaves either the old file or none, never half a file.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix + ".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
