"""Start a federated run on Flower's simulation engine (one machine) from plain Python.

The ServerApp runs in the caller's process (a Kedro node), the ClientApps in Ray actors; the
result comes back through a closure because ``run_simulation`` returns nothing. Resources per
simulated client (CPUs, GPU fraction) come from parameters; a GPU fraction is ignored without CUDA.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any

import torch

from fedrs.federated.server import FederatedConfig, run_rounds

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SimulationResources:
    num_cpus_per_client: float = 1.0
    gpu_fraction_per_client: float = 0.0
    total_cpus: int | None = None   # None: every core of the machine

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> SimulationResources:
        return cls(**(d or {}))


def run_simulation_engine(cfg: FederatedConfig, test: dict[str, Any], num_nodes: int,
                          resources: SimulationResources = SimulationResources()) -> dict[str, Any]:
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    from fedrs.federated.client_app import app as client_app

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    box: dict[str, Any] = {}
    server = ServerApp()

    @server.main()
    def main(grid, context) -> None:  # noqa: ANN001 — Flower's signature
        try:
            box["result"] = run_rounds(grid, cfg, test, expected_nodes=num_nodes)
        except BaseException as exc:  # re-raised in the caller's frame below
            box["error"] = exc

    gpus = resources.gpu_fraction_per_client if torch.cuda.is_available() else 0.0
    total_cpus = resources.total_cpus or os.cpu_count() or 1
    # Ray's socket paths must stay short: a private folder directly under the system temp dir
    ray_dir = tempfile.mkdtemp(prefix="fedrs-ray-", dir="/tmp" if os.path.isdir("/tmp") else None)
    backend: dict[str, Any] = {
        "client_resources": {"num_cpus": resources.num_cpus_per_client, "num_gpus": gpus},
        "init_args": {"num_cpus": total_cpus, "num_gpus": torch.cuda.device_count() if gpus else 0,
                      "_temp_dir": ray_dir, "include_dashboard": False, "logging_level": "ERROR"},
    }
    logger.info("Flower simulation: %d nodes, %s per client, %s", num_nodes, resources, cfg.algorithm)
    try:
        run_simulation(server_app=server, client_app=client_app, num_supernodes=num_nodes, backend_config=backend)
    finally:
        shutil.rmtree(ray_dir, ignore_errors=True)
    if "error" in box:
        raise box["error"]
    if "result" not in box:
        raise RuntimeError("the Flower simulation ended without a result; see the log above")
    return box["result"]
