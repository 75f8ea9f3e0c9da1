"""Run a federated job (``fedrs.federated.jobs``) on one of Flower's two engines, or in process.

- ``simulation``: one machine. The ServerApp runs in the caller's process (a Kedro node), the
  ClientApps in Ray actors; the result comes back through a closure because ``run_simulation``
  returns nothing. Resources per simulated client (CPUs, GPU fraction) come from parameters.
- ``deployment``: a SuperLink run by the coordinator, one SuperNode per organisation. The job's
  inputs are written to a run folder, submitted with ``flwr run`` to the SuperLink named in the
  configuration (TLS with the coordinator's CA certificate; ``insecure`` only for loopback), and
  followed with a progress bar until the ServerApp's ``status.json`` says how it ended. The
  ServerApp (``fedrs.federated.deployment``) runs on the SuperLink's machine and writes its result
  into the same run folder, so Kedro runs where the SuperLink's files are (the coordinator).
  ``flwr run`` exits 0 even when the ServerApp fails: the run's status and the status file decide.
- ``inprocess``: the ClientApp's handlers called in the caller's process, one message at a time
  (``fedrs.federated.inprocess``): no Ray start-up, a debugger and a profiler see every step.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from fedrs.config import from_mapping
from fedrs.federated.jobs import Job, RoundsJob
from fedrs.federated.server.config import FederatedConfig

logger = logging.getLogger(__name__)

ENGINES = ("simulation", "deployment", "inprocess")
CONNECTION = "fedrs"  # the connection name in the private FLWR_HOME of a submission
OFFLINE = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1", "RAY_USAGE_STATS_ENABLED": "0"}


@dataclass(frozen=True)
class SimulationResources:
    num_cpus_per_client: float = 1.0
    gpu_fraction_per_client: float = 0.0
    total_cpus: int | None = None   # None: every core of the machine

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> SimulationResources:
        return cls(**(d or {}))


@dataclass(frozen=True)
class DeploymentConfig:
    superlink: str = "127.0.0.1:9093"       # host:port of the SuperLink's Control API
    root_certificates: str | None = None    # the coordinator's CA certificate (TLS)
    insecure: bool = False                  # plain HTTP: loopback experiments only
    app_dir: str | None = None              # the Flower app folder; None: this project's flower_app/
    timeout: float = 86_400.0               # seconds before the run is stopped and the node fails
    poll_seconds: float = 1.0

    def __post_init__(self) -> None:
        if not self.insecure and not self.root_certificates:
            raise ValueError("federation.deployment: set root_certificates (the CA certificate of the SuperLink's "
                             "TLS certificate), or insecure: true for a loopback experiment")
        if self.insecure and self.root_certificates:
            raise ValueError("federation.deployment: root_certificates and insecure: true exclude each other")
        if self.root_certificates and not Path(self.root_certificates).is_file():
            raise FileNotFoundError(f"federation.deployment.root_certificates: {self.root_certificates} is not a file")


@dataclass(frozen=True)
class FederationConfig:
    engine: str = "simulation"
    deployment: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> FederationConfig:
        cfg = from_mapping(cls, d, label="federation")
        if cfg.engine not in ENGINES:
            raise ValueError(f"federation.engine is {cfg.engine!r}; expected one of {list(ENGINES)}")
        return cfg

    def deployment_config(self) -> DeploymentConfig:
        return from_mapping(DeploymentConfig, self.deployment, label="federation.deployment")


def run_job(job: Job, num_nodes: int, federation: dict[str, Any] | None = None,
            resources: SimulationResources = SimulationResources(), run_dir: str | None = None) -> dict[str, Any]:
    """The job on the engine ``federation.engine`` names; the same result dict from either."""
    fed = FederationConfig.from_dict(federation)
    if fed.engine == "inprocess":
        from fedrs.federated.inprocess import InProcessGrid

        logger.info("in-process engine: %d nodes, %s", num_nodes, job.label)
        return job.run(InProcessGrid(num_nodes), num_nodes)
    if fed.engine == "deployment":
        if not run_dir:
            raise ValueError("the deployment engine needs a run folder (the catalog's <algo>.deployment_dir)")
        return run_on_deployment(job, num_nodes, fed.deployment_config(), Path(run_dir))
    return run_on_simulation(job, num_nodes, resources)


# ----------------------------------------------------------------------------- simulation
def run_on_simulation(job: Job, num_nodes: int, resources: SimulationResources = SimulationResources()
                      ) -> dict[str, Any]:
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    from fedrs.federated.client_app import app as client_app

    for key, value in OFFLINE.items():
        os.environ.setdefault(key, value)
    box: dict[str, Any] = {}
    server = ServerApp()

    @server.main()
    def main(grid, context) -> None:  # noqa: ANN001 — Flower's signature
        try:
            box["result"] = job.run(grid, num_nodes)
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
    logger.info("Flower simulation: %d nodes, %s per client, %s", num_nodes, resources, job.label)
    try:
        run_simulation(server_app=server, client_app=client_app, num_supernodes=num_nodes, backend_config=backend)
    finally:
        shutil.rmtree(ray_dir, ignore_errors=True)
    if "error" in box:
        raise box["error"]
    if "result" not in box:
        raise RuntimeError("the Flower simulation ended without a result; see the log above")
    return box["result"]


def run_simulation_engine(cfg: FederatedConfig, validation: dict[str, Any], num_nodes: int,
                          resources: SimulationResources = SimulationResources()) -> dict[str, Any]:
    """The round loop of ``cfg`` on the simulation engine."""
    return run_on_simulation(RoundsJob(cfg, validation), num_nodes, resources)


# ----------------------------------------------------------------------------- deployment
class DeploymentRunFailed(RuntimeError):
    """The run failed on the SuperLink (its ServerApp raised, or it was stopped); carries the error."""


def _flwr() -> str:
    local = Path(sys.executable).parent / "flwr"
    found = str(local) if local.is_file() else shutil.which("flwr")
    if not found:
        raise FileNotFoundError("the Flower CLI `flwr` is not installed beside this Python (make install)")
    return found


def _app_dir(cfg: DeploymentConfig) -> Path:
    path = Path(cfg.app_dir) if cfg.app_dir else Path(__file__).resolve().parents[3] / "flower_app"
    if not (path / "pyproject.toml").is_file():
        raise FileNotFoundError(f"federation.deployment.app_dir: {path} holds no Flower app (pyproject.toml)")
    return path


def flower_home(cfg: DeploymentConfig, home: Path) -> dict[str, str]:
    """A private FLWR_HOME naming only this SuperLink, and an offline environment for ``flwr``."""
    home.mkdir(parents=True, exist_ok=True)
    lines = [f"[superlink.{CONNECTION}]", f'address = "{cfg.superlink}"']
    if cfg.insecure:
        lines.append("insecure = true")
    else:
        lines.append(f'root-certificates = "{Path(str(cfg.root_certificates)).resolve()}"')
    (home / "config.toml").write_text("\n".join(lines) + "\n")
    return {**os.environ, **OFFLINE, "FLWR_HOME": str(home)}


def _flwr_json(args: list[str], env: dict[str, str], timeout: float = 120) -> dict[str, Any]:
    done = subprocess.run([_flwr(), *args, "--format", "json"], env=env, capture_output=True, text=True,
                          timeout=timeout)
    text = done.stdout
    if "{" not in text:
        raise DeploymentRunFailed(f"`flwr {' '.join(args)}` gave no answer (exit {done.returncode}):\n"
                                  f"{(done.stdout + done.stderr)[-3000:]}")
    answer: dict[str, Any] = json.loads(text[text.index("{"):])
    if answer.get("success") is False:
        raise DeploymentRunFailed(f"`flwr {' '.join(args)}` failed: {answer.get('error-message', answer)}")
    return answer


def _run_status(run_id: int, env: dict[str, str]) -> str:
    runs = _flwr_json(["ls", CONNECTION, "--run-id", str(run_id)], env).get("runs", [])
    return str(runs[0].get("status", "")) if runs else ""


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value: dict[str, Any] = json.loads(path.read_text())
        return value
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def run_on_deployment(job: Job, num_nodes: int, cfg: DeploymentConfig, run_dir: Path) -> dict[str, Any]:
    """Submit the job to the SuperLink, follow it, and return its result (what simulation returns)."""
    folder = run_dir / f"{job.label}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    inputs, output = folder / "inputs", folder / "output"
    inputs.mkdir(parents=True, exist_ok=True)
    settings = {**job.write(inputs), "expected_nodes": int(num_nodes), "output_dir": str(output.resolve())}
    settings_file = folder / "settings.json"
    settings_file.write_text(json.dumps(settings, indent=1, default=str))
    env = flower_home(cfg, folder / "flwr_home")
    submitted = _flwr_json(["run", str(_app_dir(cfg)), CONNECTION, "--run-config",
                            f'settings-file="{settings_file.resolve()}"'], env)
    run_id = int(submitted["run-id"])
    logger.info("%s submitted to the SuperLink at %s as run %d (%s)", job.label, cfg.superlink, run_id, folder)
    bar = tqdm(total=job.total_steps, desc=f"{job.label} on {cfg.superlink}", unit="round", leave=False)
    deadline, next_check, status = time.monotonic() + cfg.timeout, 0.0, ""
    try:
        while True:
            progress = _read_json(output / "progress.json")
            if progress:
                bar.update(int(progress.get("round", 0)) - bar.n)
                if progress.get("train_loss") is not None:
                    bar.set_postfix({"loss": f"{progress['train_loss']:.4f}"})
            final = _read_json(output / "status.json")
            if final is not None:
                break
            # the status file is absent only when the ServerApp died; asking the SuperLink costs a
            # `flwr` process, so not often
            if time.monotonic() >= next_check:
                status = _run_status(run_id, env)
                if status.startswith("finished"):
                    final = _read_json(output / "status.json")
                    break
                next_check = time.monotonic() + max(30 * cfg.poll_seconds, 15.0)
            if time.monotonic() > deadline:
                _flwr_json(["stop", str(run_id), CONNECTION], env)
                raise DeploymentRunFailed(f"run {run_id} ({job.label}) did not finish within {cfg.timeout:.0f} s; "
                                          "stopped")
            time.sleep(cfg.poll_seconds)
    finally:
        bar.close()
    if final is None or final.get("status") != "completed":
        error = (final or {}).get("error") or f"the run ended as {status!r} without a status file"
        raise DeploymentRunFailed(f"run {run_id} ({job.label}) failed on the SuperLink at {cfg.superlink}: {error}\n"
                                  f"(inputs and logs in {folder})")
    result: dict[str, Any] = torch.load(output / "result.pt", weights_only=False)
    result["deployment"] = {"run_id": run_id, "superlink": cfg.superlink, "folder": str(folder)}
    return result
