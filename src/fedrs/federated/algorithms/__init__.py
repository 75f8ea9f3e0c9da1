"""Every algorithm the federated runtime runs, by name: one literal table.

Each module defines its algorithm against ``fedrs.federated.algorithm_base.Algorithm`` and imports nothing from this
package's ``__init__``; this table is the only place that names them all.
"""

from __future__ import annotations

from fedrs.feddiff.algorithm import FedDiffAlgorithm
from fedrs.feddiff.ddpm import DiffusionAlgorithm
from fedrs.federated.algorithm_base import Algorithm, ClassifierAlgorithm
from fedrs.federated.algorithms.fedcmi import FedCMIAlgorithm
from fedrs.federated.algorithms.fusion_cnn import FusionAlgorithm

ALGORITHMS: dict[str, Algorithm] = {
    # the baselines: the two-branch fusion CNN (or one branch of it)
    "centralized": FusionAlgorithm("centralized"),
    "local": FusionAlgorithm("local"),
    "fedavg": FusionAlgorithm("fedavg"),
    "fedprox": FusionAlgorithm("fedprox"),
    "fedavg_hsi": FusionAlgorithm("fedavg_hsi", ("hsi",)),
    "fedavg_lidar": FusionAlgorithm("fedavg_lidar", ("lidar",)),
    # FedCMI: cross-modal infiltration
    "fedcmi": FedCMIAlgorithm("fedcmi"),
    # FedDiff: stage 1 (one DDPM per modality) and stage 3 (the classifier) with its ablations
    "ddpm_hsi": DiffusionAlgorithm("ddpm_hsi", ("hsi",)),
    "ddpm_lidar": DiffusionAlgorithm("ddpm_lidar", ("lidar",)),
    "feddiff": FedDiffAlgorithm("feddiff"),
    "feddiff_hsi": FedDiffAlgorithm("feddiff_hsi", ("hsi",)),
    "feddiff_lidar": FedDiffAlgorithm("feddiff_lidar", ("lidar",)),
    "feddiff_centralized": FedDiffAlgorithm("feddiff_centralized", exchange=False),
    # FedDiff's classifier on its sites unsplit (modality_split.partition.split_modalities: false): each site one
    # client with both modalities, no exchange — what the modality split costs
    "feddiff_sites": FedDiffAlgorithm("feddiff_sites", exchange=False),
}

# The algorithms with a Kedro pipeline and a DVC stage of their own on the horizontal partition
# (pipelines, dvc.yaml's foreach and parameters_baselines.yml are checked against these names);
# FedDiff's own pipelines are named after its stages.
BASELINES = ("centralized", "local", "fedavg", "fedprox", "fedavg_hsi", "fedavg_lidar")
HORIZONTAL = ("fedcmi",)


def get_algorithm(name: str) -> Algorithm:
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ValueError(f"unknown algorithm {name!r}; known are {sorted(ALGORITHMS)}") from None


def get_classifier(name: str) -> ClassifierAlgorithm:
    """An algorithm whose model predicts classes (every one but the diffusion stage's)."""
    algorithm = get_algorithm(name)
    if not isinstance(algorithm, ClassifierAlgorithm):
        known = sorted(n for n, a in ALGORITHMS.items() if isinstance(a, ClassifierAlgorithm))
        raise ValueError(f"{name!r} trains no classifier (a diffusion model predicts no classes); "
                         f"classifiers are {known}")
    return algorithm


__all__ = ["ALGORITHMS", "BASELINES", "HORIZONTAL", "Algorithm", "ClassifierAlgorithm", "get_algorithm",
           "get_classifier"]
