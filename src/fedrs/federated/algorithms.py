"""The algorithms the federated runtime can run, behind one small interface.

An algorithm says how to build its model from a spec, which tensors a client with given
modalities trains and exchanges, what a client does in a round, how the server aggregates, and how
a model is scored. The Flower apps call these by name.
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

VARIANT_KEYS = ("oa", "aa", "kappa", "per_class_spread")


@dataclass(frozen=True)
class ModalityAwareAlgorithm:
    """What every algorithm here shares: modality ownership of parameters, masked FedAvg, scoring."""

    name: str
    modalities: tuple[str, ...] = ("hsi", "lidar")

    def owner(self, parameter: str) -> str | None:
        raise NotImplementedError

    def build_model(self, spec: dict[str, Any]) -> nn.Module:
        raise NotImplementedError

    def usable_modalities(self, client_modalities: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(m for m in self.modalities if m in client_modalities)

    def is_eligible(self, client_modalities: tuple[str, ...]) -> bool:
        return bool(self.usable_modalities(client_modalities))

    def client_keys(self, model: nn.Module, client_modalities: tuple[str, ...]) -> set[str]:
        """Tensors a client with these modalities trains, receives and sends back."""
        usable = self.usable_modalities(client_modalities)
        return {name for name in model.state_dict() if self.owner(name) is None or self.owner(name) in usable}

    def aggregate(self, global_state: State, updates: list[ClientUpdate]) -> State:
        return aggregate_modality_aware(global_state, updates, self.owner)[0]

    def prepare(self, artifact: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        """Inputs a trained artefact needs beyond the patches (FedDiff: its diffusion features)."""
        return data

    def predict(self, model: nn.Module, data: dict[str, Any], config: dict[str, Any],
                modalities: tuple[str, ...] | None = None, **forward: Any) -> np.ndarray:
        use = self.modalities if modalities is None else modalities
        return predict(model, data, use, TrainConfig.from_dict(config), forward or None)

    def score(self, model: nn.Module, test: dict[str, Any], config: dict[str, Any], modalities: tuple[str, ...],
              **forward: Any) -> dict[str, Any]:
        pred = self.predict(model, test, config, modalities, **forward)
        return classification_report(np.asarray(test["labels"]), pred, int(test["num_classes"]),
                                     list(test.get("class_names") or []) or None)

    def evaluate(self, model: nn.Module, test: dict[str, Any], config: dict[str, Any],
                 modalities: tuple[str, ...] | None = None) -> dict[str, Any]:
        return self.score(model, test, config, self.modalities if modalities is None else modalities)

    def evaluation_variants(self, model: nn.Module, test: dict[str, Any], config: dict[str, Any],
                            modalities: tuple[str, ...]) -> dict[str, dict[str, float]]:
        """Single-modality scores of a two-modality model: the other side zero-filled."""
        if len(modalities) < 2:
            return {}
        out = {}
        for keep in modalities:
            report = self.score(model, test, config, (keep,))
            out[f"{keep}_zero_filled"] = {k: report[k] for k in VARIANT_KEYS}
        return out


@dataclass(frozen=True)
class FusionAlgorithm(ModalityAwareAlgorithm):
    """FedAvg / FedProx over the two-branch fusion CNN or one of its unimodal variants."""

    def owner(self, parameter: str) -> str | None:
        return parameter_modality(parameter)

    def build_model(self, spec: dict[str, Any]) -> FusionCNN:
        return FusionCNN(FusionSpec.from_dict({**spec, "modalities": list(self.modalities)}))

    def client_update(self, model: nn.Module, data: dict[str, Any], client_modalities: tuple[str, ...],
                      config: dict[str, Any], seed: int, rnd: int = 1) -> tuple[State, dict[str, float]]:
        keys = self.client_keys(model, client_modalities)
        trainable = {n for n, _ in model.named_parameters() if n in keys}
        metrics = supervised_update(model, data, self.usable_modalities(client_modalities),
                                    TrainConfig.from_dict(config), seed, trainable)
        state = {k: v.detach().cpu() for k, v in model.state_dict().items() if k in keys}
        return state, metrics


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
    if name not in _REGISTRY:  # the papers' algorithms register themselves on import
        import fedrs.federated.feddiff  # noqa: F401
        import fedrs.federated.fedcmi  # noqa: F401
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown algorithm {name!r}; known are {sorted(_REGISTRY)}") from None
