"""FedDiff stage 2 where it belongs: on each client. The server sends every client the global U-Net
of each modality it holds; the client computes the diffusion features of its own pixels and keeps
them in its own feature store; only their shape and digest go back. Stage 3's messages then name
the U-Nets by digest, and each client finds its features by the same key — so no feature, and no
patch, ever leaves a client, on the simulation engine and the deployment engine alike.

The store is content-addressed: ``<modality>-<digest of U-Net, patches, timesteps, seed,
precision>.npy`` (``fedrs.cache``), so an unchanged U-Net and partition reuse what is there and a
changed one can never be read by mistake. Where it is: the SuperNode's node config
``feature-cache-dir`` (deployment), else the directory the job names (simulation: the project's
``feddiff.feature_cache_dir``), else ``feature_cache/`` beside the client's partition file.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message
from flwr.serverapp import Grid

from fedrs.cache import cached_array, content_digest
from fedrs.config import from_mapping
from fedrs.feddiff.ddpm import diffusion_feature_bundle
from fedrs.feddiff.unet import DiffusionUNet, UNetSpec
from fedrs.federated.local import TrainConfig
from fedrs.federated.server.messaging import discover_clients, make_message, wait_for_nodes

logger = logging.getLogger(__name__)

NODE_STORE_KEY = "feature-cache-dir"


@dataclass(frozen=True)
class FeatureSettings:
    """What names a client's features: the U-Nets' digests, the timesteps, the noise seed and the
    precision they were computed in (it changes the values). Travels in every stage-3 message."""

    unets: dict[str, str]            # modality → content digest of its U-Net (spec and weights)
    timesteps: list[int]
    seed: int
    precision: str = "fp32"
    store: str = ""                  # the simulated clients' store; deployment: each node's own

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureSettings:
        return from_mapping(cls, d, label="client features")


def unet_digest(entry: dict[str, Any]) -> str:
    return content_digest(entry["spec"], entry["state"])


def feature_key(modality: str, unet: str, patches: np.ndarray, timesteps: list[int], seed: int, precision: str) -> str:
    """The store's file stem of one client's features (the one keying rule of stages 2 and 3)."""
    return f"{modality}-{content_digest(unet, patches, list(timesteps), int(seed), precision)}"


def node_store(node_config: dict[str, Any], named: str, partition: Path) -> Path:
    if NODE_STORE_KEY in node_config:
        return Path(str(node_config[NODE_STORE_KEY]))
    return Path(named) if named else partition.parent / "feature_cache"


def attach_features(data: dict[str, Any], settings: FeatureSettings, store: Path,
                    load: Any = np.load) -> dict[str, Any]:
    """The client's bundle with ``<modality>_features`` of every modality it holds, from its store.
    Missing features are an error: a FedDiff model with diffusion features never trains on zeros."""
    out = dict(data)
    for modality in data["modalities"]:
        if modality not in settings.unets:
            continue
        key = feature_key(modality, settings.unets[modality], data[modality], settings.timesteps, settings.seed,
                          settings.precision)
        path = store / f"{key}.npy"
        if not path.is_file():
            raise FileNotFoundError(
                f"client {int(data['client_id'])} has no diffusion features of its {modality} patches for U-Net "
                f"{settings.unets[modality]} (timesteps {settings.timesteps}, seed {settings.seed}) in {store}: "
                f"expected {path.name}; stage 2 (the 'features' job) must run on this client first"
            )
        out[f"{modality}_features"] = load(path)
    return out


def compute_features(data: dict[str, Any], unets: dict[str, dict[str, Any]], job: dict[str, Any], store: Path
                     ) -> dict[str, Any]:
    """Client side of stage 2: features of the client's own patches with each received U-Net, kept
    in ``store``; returns what the server may know (shape, digest, whether they were reused)."""
    policy = TrainConfig.from_dict({k: job[k] for k in ("device", "precision") if k in job}).policy()
    timesteps, seed = list(job["timesteps"]), int(job["seed"])
    report: dict[str, Any] = {}
    for modality, entry in unets.items():
        model = DiffusionUNet(UNetSpec.from_dict(entry["spec"]))
        model.load_state_dict(entry["state"])
        digest = unet_digest(entry)
        key = feature_key(modality, digest, data[modality], timesteps, seed, policy.precision)

        def compute(model: DiffusionUNet = model, patches: np.ndarray = data[modality]) -> np.ndarray:
            return diffusion_feature_bundle(model, patches, timesteps, seed, policy)

        array, hit = cached_array(store, key, compute, refresh=not job.get("cache", True))
        report[modality] = {"unet": digest, "shape": list(array.shape), "reused": hit,
                            "precision": policy.precision}
    return report


@dataclass
class FeatureJob:
    """Stage 2 over a grid: every client featurises its own pixels with the global U-Nets."""

    unets: dict[str, dict[str, Any]]      # modality → {"spec", "state"}
    timesteps: list[int]
    seed: int
    device: str = "auto"
    precision: str = "fp32"
    cache: bool = True                    # false: recompute (and overwrite) even when stored
    partition_dir: str = ""               # simulation: where the clients' files are
    store: str = ""                       # simulation: the clients' feature store
    node_wait_timeout: float = 120.0
    timeout: float | None = 3600.0
    client_threads: int = 1               # PyTorch threads per client (see FederatedConfig)

    def settings(self) -> dict[str, Any]:
        """What every message carries (the U-Nets travel as arrays)."""
        job = {k: v for k, v in asdict(self).items() if k != "unets"}
        return {"partition_dir": self.partition_dir, "features_job": job, "client_threads": self.client_threads,
                "unet_specs": {m: e["spec"] for m, e in self.unets.items()}}

    def feature_settings(self) -> FeatureSettings:
        return FeatureSettings({m: unet_digest(e) for m, e in self.unets.items()}, list(self.timesteps),
                               int(self.seed), self.precision_used(), self.store)

    def precision_used(self) -> str:
        return TrainConfig.from_dict({"device": self.device, "precision": self.precision}).policy().precision


def run_feature_job(grid: Grid, job: FeatureJob, expected_nodes: int) -> dict[str, Any]:
    """Send each client the U-Nets of the modalities it holds, wait for all of them (stage 3 cannot
    run with a client missing its features), and return the manifest and traffic."""
    started = time.perf_counter()
    settings = job.settings()
    nodes = wait_for_nodes(grid, expected_nodes, job.node_wait_timeout)
    clients = discover_clients(grid, nodes, settings)
    messages, traffic, expected = [], [], {}
    for cid, info in sorted(clients.items()):
        held = [m for m in info["modalities"] if m in job.unets]
        if not held:
            continue
        content = {f"unet|{m}": ArrayRecord.from_torch_state_dict(job.unets[m]["state"]) for m in held}
        messages.append(make_message(content, settings, info["node"], "query.features", 0))
        expected[info["node"]] = cid
        size = int(sum(t.numel() * t.element_size() for m in held for t in job.unets[m]["state"].values()))
        traffic.append({"round": 0, "client_id": cid, "direction": "down", "payload": "unet",
                        "bytes_dense": size, "bytes_sent": size})
    replies: list[Message] = list(grid.send_and_receive(messages, timeout=job.timeout))
    answered, failures, reports = set(), [], {}
    for reply in replies:
        sender = expected.get(reply.metadata.src_node_id)
        if sender is None:
            continue
        answered.add(sender)
        if reply.has_error():
            failures.append(f"client {sender}: {reply.error.reason}")
            continue
        reports[sender] = _decode_report(reply)
    missing = sorted(set(expected.values()) - answered)
    if failures or missing:
        detail = "\n".join(failures + ([f"no reply from clients {missing} within {job.timeout} s"] if missing else []))
        raise RuntimeError(f"stage 2: {len(failures) + len(missing)} of {len(expected)} clients have no features; "
                           f"stage 3 would train on nothing.\n{detail}")
    reused = sorted(cid for cid, r in reports.items() if all(v["reused"] for v in r.values()))
    if reused:
        logger.info("Diffusion features reused from the clients' stores for %d of %d clients", len(reused),
                    len(reports))
    return feature_manifest(job, reports, reused, traffic, time.perf_counter() - started)


def feature_manifest(job: FeatureJob, reports: dict[int, dict[str, Any]] | None = None,
                     reused: list[int] | None = None, traffic: list[dict[str, Any]] | None = None,
                     seconds: float = 0.0) -> dict[str, Any]:
    """What stage 3 reads of stage 2: the settings naming the clients' features, each client's
    feature shapes, what came from their stores, the U-Nets' traffic. Without U-Nets (no DDPM),
    the manifest of nothing computed."""
    feature_settings = job.feature_settings()
    return {
        "settings": asdict(feature_settings),
        "timesteps": list(job.timesteps),
        "seed": int(job.seed),
        "unets": feature_settings.unets,
        "reused_from_cache": reused or [],
        "clients": {str(cid): {m: r["shape"] for m, r in rep.items()} for cid, rep in sorted((reports or {}).items())},
        "traffic": traffic or [],
        "seconds": seconds,
    }


def _decode_report(reply: Message) -> dict[str, Any]:
    return json.loads(str(reply.content.config_records["features"]["report"]))


def received_unets(content: Any, specs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The U-Nets a stage-2 message carries (client side)."""
    out = {}
    for name in content.array_records:
        if name.startswith("unet|"):
            modality = name.split("|", 1)[1]
            out[modality] = {"spec": specs[modality], "state": content.array_records[name].to_torch_state_dict()}
    return out
