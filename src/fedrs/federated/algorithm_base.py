"""The interface every federated algorithm implements, and the parts most of them share.

An algorithm says what a client computes in a round (``client_objective``, and for the algorithms
that exchange intermediate outputs ``client_exchange``), how the server aggregates (``aggregate``,
with its round protocol), and how a model predicts and is scored (``ClassifierAlgorithm``). The
Flower apps and the plain trainers call these and nothing else.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from fedrs.federated.aggregation import ClientUpdate, State, aggregate_modality_aware
from fedrs.federated.local import (
    CrossEntropyTally,
    Objective,
    TrainConfig,
    batch_inputs,
    inference_batches,
    objective_statistics,
    predict,
    train_objective,
)
from fedrs.metrics import classification_report

VARIANT_KEYS = ("oa", "aa", "kappa", "per_class_spread")
Modalities = tuple[str, ...]


@dataclass(frozen=True)
class Algorithm(ABC):
    """What the round loop, the ClientApp and the standalone trainers call. Four things are the
    algorithm's own — who owns a parameter, its model, what a client computes, how a model is
    scored; the rest has the defaults most algorithms here share (modality-aware masked FedAvg, no
    partner exchange, no extra inputs, no calibration), which an algorithm overrides where it differs."""

    name: str
    modalities: Modalities = ("hsi", "lidar")

    # -- what is the algorithm's own --------------------------------------------------------------
    @abstractmethod
    def owner(self, parameter: str) -> str | None:
        """The modality owning a parameter (averaged over that modality's holders), None if shared."""

    @abstractmethod
    def build_model(self, spec: dict[str, Any]) -> nn.Module:
        """A fresh model from its spec (initialised from torch's global RNG)."""

    @abstractmethod
    def client_objective(self, model: nn.Module, data: dict[str, Any], client_modalities: Modalities,
                         config: dict[str, Any], rnd: int = 1,
                         partner: dict[str, torch.Tensor] | None = None) -> Objective:
        """What a client computes in a round on its data (``fedrs.federated.local.Objective``).
        ``partner``: the site partner's relayed outputs (FedDiff)."""

    @abstractmethod
    def evaluate(self, model: nn.Module, test: dict[str, Any], config: dict[str, Any],
                 modalities: Modalities | None = None) -> dict[str, Any]:
        """Scores of the model on test data (classifiers: OA, AA, κ, per class)."""

    # -- what a client takes part with and sends ---------------------------------------------------
    def usable_modalities(self, client_modalities: Modalities) -> Modalities:
        return tuple(m for m in self.modalities if m in client_modalities)

    def scores_whole_model(self, client_modalities: Modalities) -> bool:
        """Whether a client holding these modalities computes the model's prediction of its pixels
        as a test pixel's is computed (every modality the model takes; FedDiff: with its partner's)."""
        return self.usable_modalities(client_modalities) == self.modalities

    def is_eligible(self, client_modalities: Modalities) -> bool:
        """Whether a client holding these modalities takes part."""
        return bool(self.usable_modalities(client_modalities))

    def client_keys(self, model: nn.Module, client_modalities: Modalities) -> set[str]:
        """Tensors a client with these modalities trains, receives and sends back."""
        usable = self.usable_modalities(client_modalities)
        return {name for name in model.state_dict() if self.owner(name) is None or self.owner(name) in usable}

    def trainable(self, model: nn.Module, client_modalities: Modalities) -> set[str]:
        keys = self.client_keys(model, client_modalities)
        return {n for n, _ in model.named_parameters() if n in keys}

    def client_update(self, model: nn.Module, data: dict[str, Any], client_modalities: Modalities,
                      config: dict[str, Any], seed: int, rnd: int = 1,
                      partner: dict[str, torch.Tensor] | None = None,
                      carry: dict[str, Any] | None = None) -> tuple[State, dict[str, float]]:
        """Train ``model`` in place on a client's data; its tensors to send and its metrics.
        ``carry``: what the client keeps between rounds (the optimiser's state, with
        ``keep_optimizer_state``), read and updated."""
        objective = self.client_objective(model, data, client_modalities, config, rnd, partner)
        return train_objective(model, objective, seed, carry)

    def client_statistics(self, model: nn.Module, data: dict[str, Any], client_modalities: Modalities,
                          config: dict[str, Any], seed: int, rnd: int = 1,
                          partner: dict[str, torch.Tensor] | None = None) -> tuple[State, dict[str, float]]:
        """The statistics pass: the objective run without training; its BatchNorm statistics."""
        objective = self.client_objective(model, data, client_modalities, config, rnd, partner)
        return objective_statistics(model, objective, seed)

    @property
    def exchanges_features(self) -> bool:
        """Whether each round starts with clients exchanging intermediate outputs with a partner."""
        return False

    @property
    def round_protocol(self) -> str:
        """The server's round protocol (``fedrs.federated.server.loop.PROTOCOLS``): the partner relay
        for an algorithm whose clients exchange intermediate outputs, else uniform sampling."""
        return "partner_relay" if self.exchanges_features else "uniform"

    def client_exchange(self, model: nn.Module, data: dict[str, Any], client_modalities: Modalities,
                        config: dict[str, Any]) -> dict[str, torch.Tensor]:
        """What a client sends its partner at the start of a round (if ``exchanges_features``)."""
        raise NotImplementedError(f"{self.name} exchanges no intermediate outputs")

    # -- how the server aggregates ---------------------------------------------------------------
    def aggregate(self, global_state: State, updates: list[ClientUpdate]) -> State:
        """The new global state from the accepted client updates: each tensor the weighted mean over
        the clients holding its modality (``aggregate_modality_aware``)."""
        return aggregate_modality_aware(global_state, updates, self.owner)[0]

    # -- what scoring a trained artefact needs -----------------------------------------------------
    def prepare(self, artifact: dict[str, Any], data: dict[str, Any],
                config: dict[str, Any] | None = None) -> dict[str, Any]:
        """Inputs a trained artefact needs beyond the patches (FedDiff: its diffusion features),
        computed under ``config``'s device and precision."""
        return data

    def evaluation_variants(self, model: nn.Module, test: dict[str, Any], config: dict[str, Any],
                            modalities: Modalities) -> dict[str, dict[str, float]]:
        """Scores with one modality only (zero-filled, or the algorithm's own stand-in)."""
        return {}

    def probe_inputs(self, model: nn.Module, data: dict[str, Any], timesteps: tuple[int, ...], seed: int,
                     config: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
        """Per input name, one row per pixel of ``data``: what the linear probe of stage 1 scores
        (``fedrs.feddiff.probe``), computed under ``config``'s device and precision; only the
        diffusion models have one."""
        raise NotImplementedError(f"{self.name} has no linear probe")

    # -- classifier calibration (``fedrs.federated.calibration``) ---------------------------------
    def calibration_layer(self) -> str | None:
        """The module (a Linear or 1×1 convolution) that maps the classifier's features to the
        logits the model predicts with — what classifier calibration retrains; None: not supported."""
        return None

    def require_calibration_layer(self) -> str:
        layer = self.calibration_layer()
        if layer is None:
            raise NotImplementedError(f"{self.name} does not support classifier calibration")
        return layer

    def calibration_contributes(self, client_modalities: Modalities) -> bool:
        """Whether a client's features are those the model sees at test time (all its modalities)."""
        return self.calibration_layer() is not None and self.scores_whole_model(client_modalities)

    def client_features(self, model: nn.Module, data: dict[str, Any], client_modalities: Modalities,
                        config: dict[str, Any], partner: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The input of ``calibration_layer`` for every pixel of a client, in order, with the model
        in eval mode (``partner``: FedDiff's relayed outputs of the site partner)."""
        raise NotImplementedError(f"{self.name} does not support classifier calibration")


@dataclass(frozen=True)
class ClassifierAlgorithm(Algorithm):
    """An algorithm whose model predicts classes: prediction, OA/AA/κ scoring, the zero-filled
    single-modality variants and the features calibration retrains. Subclasses give ``owner``,
    ``build_model`` and ``client_objective``."""

    def client_features(self, model: nn.Module, data: dict[str, Any], client_modalities: Modalities,
                        config: dict[str, Any], partner: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        use = self.usable_modalities(client_modalities)
        cfg = TrainConfig.from_dict(inference_config(config))
        return layer_inputs(model, self.require_calibration_layer(), len(data["labels"]), cfg,
                            lambda sl, device: model(**batch_inputs(data, sl, use, device)))

    def predict(self, model: nn.Module, data: dict[str, Any], config: dict[str, Any],
                modalities: Modalities | None = None, *, tally: CrossEntropyTally | None = None,
                **forward: Any) -> np.ndarray:
        """Predicted class index (0-based) of every sample of ``data`` (``tally``: their cross-entropy
        added to it)."""
        use = self.modalities if modalities is None else modalities
        return predict(model, data, use, TrainConfig.from_dict(inference_config(config)), forward or None, tally)

    def client_predict(self, model: nn.Module, data: dict[str, Any], client_modalities: Modalities,
                       config: dict[str, Any], partner: dict[str, torch.Tensor] | None = None,
                       tally: CrossEntropyTally | None = None) -> np.ndarray:
        """A client's prediction of its own pixels with the whole model (``scores_whole_model``)."""
        if not self.scores_whole_model(client_modalities):
            raise ValueError(f"{self.name}: a client holding {'+'.join(client_modalities)} cannot score the whole "
                             f"model (it takes {'+'.join(self.modalities)})")
        return self.predict(model, data, config, tally=tally)

    def score(self, model: nn.Module, test: dict[str, Any], config: dict[str, Any], modalities: Modalities,
              *, tally: CrossEntropyTally | None = None, **forward: Any) -> dict[str, Any]:
        """OA, AA, κ, per class; the scored model's own cross-entropy (``loss``) and expected
        calibration error (``ece``). ``tally``: the one to gather them in (one with temperatures)."""
        labels = np.asarray(test["labels"])
        tally = CrossEntropyTally(labels) if tally is None else tally
        pred = self.predict(model, test, config, modalities, tally=tally, **forward)
        report = classification_report(labels, pred, int(test["num_classes"]),
                                       list(test.get("class_names") or []) or None)
        return {**report, "loss": tally.mean, "ece": tally.ece}

    def evaluate(self, model: nn.Module, test: dict[str, Any], config: dict[str, Any],
                 modalities: Modalities | None = None) -> dict[str, Any]:
        return self.score(model, test, config, self.modalities if modalities is None else modalities)

    def evaluation_variants(self, model: nn.Module, test: dict[str, Any], config: dict[str, Any],
                            modalities: Modalities) -> dict[str, dict[str, float]]:
        """Single-modality scores of a two-modality model: the other side zero-filled."""
        if len(modalities) < 2:
            return {}
        out = {}
        for keep in modalities:
            report = self.score(model, test, config, (keep,))
            out[f"{keep}_zero_filled"] = {k: report[k] for k in VARIANT_KEYS}
        return out


INFERENCE_KEYS = ("device", "precision", "eval_batch_size")


def layer_inputs(model: nn.Module, layer: str, n: int, cfg: TrainConfig,
                 forward: Callable[[slice, torch.device], Any]) -> torch.Tensor:
    """What module ``layer`` of ``model`` receives (flattened per sample) while ``forward(slice,
    device)`` runs over ``n`` samples in order, in eval mode under the precision policy."""
    policy = cfg.policy()
    model.to(policy.device).eval()
    captured: list[torch.Tensor] = []
    hook = model.get_submodule(layer).register_forward_pre_hook(
        lambda _module, args: captured.append(args[0].detach().float().flatten(1).cpu()))
    try:
        with torch.inference_mode():
            for sl in inference_batches(n, cfg.eval_batch_size):
                with policy.autocast():
                    forward(sl, policy.device)
    finally:
        hook.remove()
    return torch.cat(captured) if captured else torch.empty(0)


def inference_config(config: dict[str, Any] | None) -> dict[str, Any]:
    """The keys of a training or evaluation config that scoring uses (device, precision, batch)."""
    return {k: v for k, v in (config or {}).items() if k in INFERENCE_KEYS}
