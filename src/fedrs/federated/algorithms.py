"""The algorithms the federated runtime can run, behind one small interface.

An algorithm says how to build its model from a spec, what a client does with the global weights
and its partition, how the server aggregates, and how the global model is scored. The Flower apps
call these by name; FedDiff and FedCMI register here too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from fedrs.federated.aggregation import ClientUpdate, State, aggregate_modality_aware
from fedrs.federated.local import TrainConfig, predict, supervised_update
from fedrs.metrics import classification_report
from fedrs.models.baselines import FusionCNN, FusionSpec, parameter_modality


@dataclass(frozen=True)
class FusionAlgorithm:
    """FedAvg / FedProx over the two-branch fusion CNN or one of its unimodal variants."""

    name: str
    modalities: tuple[str, ...] = ("hsi", "lidar")

    def build_model(self, spec: dict[str, Any]) -> FusionCNN:
        return FusionCNN(FusionSpec.from_dict({**spec, "modalities": list(self.modalities)}))

    def usable_modalities(self, client_modalities: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(m for m in self.modalities if m in client_modalities)

    def is_eligible(self, client_modalities: tuple[str, ...]) -> bool:
        return bool(self.usable_modalities(client_modalities))

    def client_keys(self, model: nn.Module, client_modalities: tuple[str, ...]) -> set[str]:
        """Tensors a client with these modalities trains, receives and sends back."""
        usable = self.usable_modalities(client_modalities)
        keys = set()
        for name in model.state_dict():
            owner = parameter_modality(name)
            if owner is None or owner in usable:
                keys.add(name)
        return keys

    def client_update(self, model: nn.Module, data: dict[str, Any], client_modalities: tuple[str, ...],
                      config: dict[str, Any], seed: int) -> tuple[State, dict[str, float]]:
        keys = self.client_keys(model, client_modalities)
        trainable = {n for n, _ in model.named_parameters() if n in keys}
        metrics = supervised_update(model, data, self.usable_modalities(client_modalities),
                                    TrainConfig.from_dict(config), seed, trainable)
        state = {k: v.detach().cpu() for k, v in model.state_dict().items() if k in keys}
        return state, metrics

    def aggregate(self, global_state: State, updates: list[ClientUpdate]) -> State:
        return aggregate_modality_aware(global_state, updates, parameter_modality)[0]

    def evaluate(self, model: nn.Module, test: dict[str, Any], config: dict[str, Any],
                 modalities: tuple[str, ...] | None = None) -> dict[str, Any]:
        use = self.modalities if modalities is None else modalities
        pred = predict(model, test, use, TrainConfig.from_dict(config))
        return classification_report(np.asarray(test["labels"]), pred, int(test["num_classes"]),
                                     list(test.get("class_names") or []) or None)


_REGISTRY: dict[str, Any] = {
    "fedavg": FusionAlgorithm("fedavg"),
    "fedprox": FusionAlgorithm("fedprox"),
    "fedavg_hsi": FusionAlgorithm("fedavg_hsi", ("hsi",)),
    "fedavg_lidar": FusionAlgorithm("fedavg_lidar", ("lidar",)),
    "centralized": FusionAlgorithm("centralized"),
    "local": FusionAlgorithm("local"),
}


def register(name: str, algorithm: Any) -> None:
    _REGISTRY[name] = algorithm


def get_algorithm(name: str) -> Any:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown algorithm {name!r}; known are {sorted(_REGISTRY)}") from None
