"""FedAvg / FedProx (and centralized, local, unimodal FedAvg) over the two-branch fusion CNN."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fedrs.federated.algorithm_base import ClassifierAlgorithm, Modalities
from fedrs.federated.local import Objective, TrainConfig, supervised_objective
from fedrs.models.fusion_cnn import FusionCNN, FusionSpec, parameter_modality


@dataclass(frozen=True)
class FusionAlgorithm(ClassifierAlgorithm):
    """Cross-entropy local updates of the fusion CNN or one of its unimodal variants; FedProx is
    the same with ``proximal_mu`` > 0 in the training config."""

    def owner(self, parameter: str) -> str | None:
        return parameter_modality(parameter)

    def calibration_layer(self) -> str:
        return "classifier.3"  # Linear(dim, num_classes) after the fused hidden layer

    def build_model(self, spec: dict[str, Any]) -> FusionCNN:
        return FusionCNN(FusionSpec.from_dict({**spec, "modalities": list(self.modalities)}))

    def client_objective(self, model: nn.Module, data: dict[str, Any], client_modalities: Modalities,
                         config: dict[str, Any], rnd: int = 1,
                         partner: dict[str, torch.Tensor] | None = None) -> Objective:
        return supervised_objective(model, data, self.usable_modalities(client_modalities),
                                    TrainConfig.from_dict(config), self.trainable(model, client_modalities),
                                    self.client_keys(model, client_modalities))
