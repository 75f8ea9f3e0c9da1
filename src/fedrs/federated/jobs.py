"""What a federated run does on the server, independent of the engine that carries it.

A job is one server function over a Flower grid — ``RoundsJob`` (the round loop of any algorithm,
FedDiff's DDPMs and classifier included) or ``FeaturesJob`` (FedDiff's stage 2 on the clients).
The simulation engine calls ``job.run`` in the caller's process with the inputs in memory; the
deployment engine writes them to files (``job.write``), and the ServerApp on the SuperLink reads
them back (``read_job``) and calls the same ``run`` — one code path, so both engines give the same
result for the same seed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from flwr.serverapp import Grid

from fedrs.datasets._files import atomic_path
from fedrs.datasets.npz import NpzDataset
from fedrs.feddiff.features import FeatureJob, run_feature_job
from fedrs.federated.server.config import FederatedConfig
from fedrs.federated.server.loop import run_rounds
from fedrs.federated.server.validation import server_validation

Progress = Callable[[dict[str, Any]], None]


class Job(Protocol):
    kind: str

    @property
    def label(self) -> str: ...

    @property
    def total_steps(self) -> int: ...

    def run(self, grid: Grid, expected_nodes: int, on_round: Progress | None = None) -> dict[str, Any]: ...

    def write(self, directory: Path) -> dict[str, Any]: ...


@dataclass
class RoundsJob:
    cfg: FederatedConfig
    validation: dict[str, Any]  # what each round is scored on (never the test pixels)
    kind: str = "rounds"

    def __post_init__(self) -> None:
        # the clients score their own validation pixels: the server holds none (nor writes any for a deployment)
        self.validation = server_validation(self.cfg, self.validation)

    @property
    def label(self) -> str:
        return self.cfg.algorithm

    @property
    def total_steps(self) -> int:
        return self.cfg.num_rounds

    def run(self, grid: Grid, expected_nodes: int, on_round: Progress | None = None) -> dict[str, Any]:
        return run_rounds(grid, self.cfg, self.validation, expected_nodes, on_round=on_round)

    def write(self, directory: Path) -> dict[str, Any]:
        path = directory / "validation_patches.npz"
        NpzDataset(str(path)).save(self.validation)
        return {"job": self.kind, "federated": asdict(self.cfg), "validation_patches": str(path.resolve())}

    @classmethod
    def read(cls, settings: dict[str, Any]) -> RoundsJob:
        return cls(FederatedConfig.from_dict(settings["federated"]), NpzDataset(settings["validation_patches"]).load())


@dataclass
class FeaturesJob:
    job: FeatureJob
    kind: str = "features"

    @property
    def label(self) -> str:
        return "feddiff_features"

    @property
    def total_steps(self) -> int:
        return 1

    def run(self, grid: Grid, expected_nodes: int, on_round: Progress | None = None) -> dict[str, Any]:
        result = run_feature_job(grid, self.job, expected_nodes)
        if on_round is not None:
            on_round({"round": 1, "num_rounds": 1})
        return result

    def write(self, directory: Path) -> dict[str, Any]:
        path = directory / "unets.pt"
        with atomic_path(path, suffix=".pt") as tmp:
            torch.save(self.job.unets, tmp)
        fields = {k: v for k, v in asdict(self.job).items() if k != "unets"}
        return {"job": self.kind, "features": fields, "unets_file": str(path.resolve())}

    @classmethod
    def read(cls, settings: dict[str, Any]) -> FeaturesJob:
        unets = torch.load(settings["unets_file"], weights_only=True)
        return cls(FeatureJob(unets=unets, **settings["features"]))


JOBS: dict[str, type[RoundsJob] | type[FeaturesJob]] = {"rounds": RoundsJob, "features": FeaturesJob}


def read_job(settings: dict[str, Any]) -> RoundsJob | FeaturesJob:
    kind = settings.get("job", "rounds")
    if kind not in JOBS:
        raise ValueError(f"settings 'job' is {kind!r}; expected one of {sorted(JOBS)}")
    return JOBS[kind].read(settings)
