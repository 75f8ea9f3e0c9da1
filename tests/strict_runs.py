"""Tiny federated runs of every kind of work the pipelines do, for the strict mode's cross-CPU check:
FedAvg with the low-rank codec both ways and classifier calibration, with DP, with SecAgg+ and DP,
FedCMI, FedDiff's classifier with the feature exchange, its codec and calibration (once more with
its clients scoring and temperature scaling, and once without calibration, with dihedral
augmentation), and a DDPM
stage-1 round with features — on
the in-process grid (the real ClientApp handlers, no Ray). Prints one digest per run, of the final
weights and every number of its history but the clock's.

    FEDRS_REPRODUCIBLE=1 .venv/bin/python -m tests.strict_runs [NAME ...]  # (also under qemu-x86_64 -cpu X)
"""

from __future__ import annotations

import fedrs  # noqa: F401 — first, so that strict mode caps NumPy before it loads

# isort: split
import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from fedrs.feddiff.ddpm import diffusion_feature_bundle
from fedrs.feddiff.unet import DiffusionUNet, UNetSpec
from fedrs.federated.server.config import FederatedConfig
from fedrs.federated.server.loop import run_rounds
from tests.federated.fake_grid import FakeGrid
from tests.federated.tiny import horizontal_federation, split_federation

CODEC = {"rank": 2, "quantize_bits": 8}


def digest(result: dict[str, Any]) -> str:
    h = hashlib.sha256()
    for name in sorted(result["state"]):
        h.update(name.encode())
        h.update(result["state"][name].detach().contiguous().numpy().tobytes())
    rows = [{k: v for k, v in row.items() if "seconds" not in k} for row in result["history"]]  # not the clock
    h.update(json.dumps(rows, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def runs(root: Path, only: set[str] | None = None) -> dict[str, str]:
    flat = horizontal_federation(root / "horizontal")
    split = split_federation(root / "split")
    # the server scores (the digests were measured on other CPU kinds before the clients could score)
    base = {"train": {"epochs": 1, "batch_size": 8}, "num_rounds": 2, "min_clients": 1, "seed": 5,
            "eval_samples": 200, "validation": "server"}
    feddiff = {"algorithm": "feddiff", "model": split["spec"], "client_data_dirs": [split["features_dir"]],
               "compression": CODEC, "exchange_compression": {"rank": 4}}
    configs = {
        "fedavg": (flat, {"algorithm": "fedavg", "model": flat["spec"], "compression": CODEC,
                          "downlink_compression": CODEC, "calibration": {"virtual_per_class": 20, "steps": 20}}),
        # the DP runs' noise is the OS's and differs run to run: pinned here with the test-only switch
        "fedavg_dp": (flat, {"algorithm": "fedavg", "model": flat["spec"],
                             "privacy": {"noise_multiplier": 0.5, "clipping_norm": 5.0, "deterministic_noise": True}}),
        "fedavg_secure_dp": (flat, {"algorithm": "fedavg", "model": flat["spec"], "secure_aggregation": {},
                                    "privacy": {"noise_multiplier": 0.5, "clipping_norm": 5.0, "clipping": "client",
                                                "deterministic_noise": True}}),
        "fedcmi": (flat, {"algorithm": "fedcmi", "model": {**flat["spec"], "width": 8, "dim": 16}}),
        "feddiff": (split, {**feddiff, "calibration": {"virtual_per_class": 20, "steps": 20}}),
        # the clients scoring, then temperature scaling: their curves added, the last layer divided by T
        "feddiff_temperature": (split, {**feddiff, "validation": "clients", "temperature": {},
                                        "calibration": {"virtual_per_class": 20, "steps": 20}}),
        # dihedral augmentation: integer draws and exact copies (rot90, flip), so no kernel choice should
        # enter — this digest is what shows it, on patches, features and the partner's maps alike
        "feddiff_augmented": (split, {**feddiff, "train": {**base["train"], "augment": "dihedral"}}),
        "ddpm_hsi": (split, {"algorithm": "ddpm_hsi", "num_rounds": 1, "train": {"epochs": 1, "batch_size": 16},
                             "model": {"in_channels": int(split["test"]["hsi"].shape[1]), "base_channels": 8,
                                       "steps": 50}}),
    }
    unknown = (only or set()) - {*configs, "ddpm_features"}
    if unknown:
        raise SystemExit(f"strict_runs: no run named {sorted(unknown)}; the runs are {[*configs, 'ddpm_features']}")
    if only and "ddpm_features" in only:  # the features need the DDPM round
        only = only | {"ddpm_hsi"}
    out = {}
    for name, (fed, overrides) in configs.items():
        if only and name not in only:
            continue
        cfg = FederatedConfig.from_dict({**base, "partition_dir": fed["dir"], **overrides})
        result = run_rounds(FakeGrid(fed["num_clients"]), cfg, fed["test"], fed["num_clients"])
        out[name] = digest(result)
        if name == "ddpm_hsi":  # stage 2: the features of the trained U-Net
            unet = DiffusionUNet(UNetSpec.from_dict(cfg.model))
            unet.load_state_dict(result["state"])
            features = diffusion_feature_bundle(unet, fed["test"]["hsi"][:64], [5, 20], seed=3)
            out["ddpm_features"] = hashlib.sha256(features.tobytes()).hexdigest()[:16]
    return out


if __name__ == "__main__":
    import sys

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:  # names as arguments: only those runs (emulation is slow)
        print(json.dumps(runs(Path(folder), set(sys.argv[1:]) or None)))
