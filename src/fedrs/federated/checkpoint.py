"""Round checkpoints: global model, strategy state, round, RNG state and history, written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fedrs.datasets._files import atomic_path

FILENAME = "checkpoint.pt"


def save_checkpoint(folder: str | Path, state: dict[str, Any]) -> Path:
    target = Path(folder) / FILENAME
    with atomic_path(target, suffix=".pt") as tmp:
        torch.save(state, tmp)
    return target


def load_checkpoint(folder: str | Path) -> dict[str, Any] | None:
    path = Path(folder) / FILENAME
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)
