"""FedDiff stage 3 on the shared runtime (../shared/spec/feddiff.md): the bilateral dual-branch
classifier trained with the feature exchange (stages 1 and 2 are in ``ddpm``).

Per round every sampled client sends its branch outputs (cnn_m, diff_m on its own pixels) through
the codec; the server relays them to the partner holding the other modality of the same site; each
client trains its branch and its copy of the fusion blocks and heads on its live outputs plus the
partner's (constant) ones; branches average over same-modality clients, fusion and heads over all.
Only compressed branch outputs and weights cross — never patches.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from fedrs.config import from_mapping
from fedrs.feddiff.classifier import (
    FedDiffClassifier,
    FedDiffSpec,
    conv_weight_penalty,
    feddiff_loss_terms,
    unimodal_cross_entropy,
)
from fedrs.feddiff.ddpm import diffusion_feature_bundle, unet_input
from fedrs.feddiff.unet import DiffusionUNet, UNetSpec
from fedrs.federated.algorithm_base import ClassifierAlgorithm, Modalities, inference_config, layer_inputs
from fedrs.federated.local import (
    Batch,
    CrossEntropyTally,
    Objective,
    TrainConfig,
    inference_batches,
    predict_batches,
    split_config,
)

MODALITIES = ("hsi", "lidar")
CONSISTENCY_TARGETS = ("joint", "detached")


@dataclass(frozen=True)
class FedDiffTraining:
    """FedDiff's own training keys (the rest of ``classifier.train`` is a TrainConfig), with the
    same defaults as conf/base/parameters_feddiff.yml."""

    weight_term: float = 0.01              # λ of Σ‖W‖² over the trained conv weights
    weight_term_mode: str = "decoupled"    # decoupled: w ← w − lr·2λ·w beside Adam | loss: inside the loss
    exchange_bn: str = "eval"              # BatchNorm of the outputs sent to the partner: eval | train
    present_classes_only: bool = False     # cross-entropy over the classes the client holds
    logit_adjustment: float = 0.0          # τ: train on logits + τ·log(client's class prior) (logit calibration)
    consistency_target: str = "joint"      # joint: the spec's consistency, its gradient into o1 too | detached
    unimodal_ce: float = 0.0               # μ: adds μ·(CE(o2, y) + CE(o3, y)), the unimodal heads against the labels

    def __post_init__(self) -> None:
        if self.unimodal_ce < 0:
            raise ValueError(f"feddiff: unimodal_ce {self.unimodal_ce}; expected a weight ≥ 0")
        if self.consistency_target not in CONSISTENCY_TARGETS:
            raise ValueError(f"feddiff: consistency_target {self.consistency_target!r}; expected one of "
                             f"{list(CONSISTENCY_TARGETS)}")
        if self.weight_term_mode not in ("loss", "decoupled"):
            raise ValueError(f"feddiff: weight_term_mode {self.weight_term_mode!r}; expected 'loss' or 'decoupled'")
        if self.exchange_bn not in ("eval", "train"):
            raise ValueError(f"feddiff: exchange_bn {self.exchange_bn!r}; expected 'eval' or 'train'")

    @classmethod
    def split(cls, config: dict[str, Any] | None) -> tuple[TrainConfig, FedDiffTraining]:
        cfg, own = split_config(config, *(f.name for f in fields(cls)))
        return cfg, from_mapping(cls, own)


def branch_inputs(data: dict[str, Any], modality: str, spec: FedDiffSpec) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A modality's patches at the U-Net size and its diffusion features, built once per call:
    the resize is per sample, so batches index these instead of resizing every epoch. A model that
    uses diffusion features and finds none for its pixels is an error."""
    key = f"{modality}_features"
    if spec.diffuses(modality) and key not in data:
        raise ValueError(f"feddiff: no {key} for these {len(data[modality])} pixels; a FedDiff model whose "
                         f"{modality} branch uses diffusion features trains and predicts only with them")
    features = torch.as_tensor(np.asarray(data[key]), dtype=torch.float32) if spec.diffuses(modality) else None
    return unet_input(data[modality], spec.unet_size), features


def prior_adjustment(labels: torch.Tensor, num_classes: int, tau: float) -> torch.Tensor:
    """τ·log(the class prior of ``labels``), a class without pixels at half a pixel's share: added to
    a client's logits while it trains (logit adjustment, Menon et al. 2021; FedLC, Zhang et al. 2022),
    its local optimum no longer encodes its own class skew — on class-disjoint sites, the classes it
    never sees are not pushed down — and the averaged model predicts without any prior."""
    prior = torch.bincount(labels, minlength=num_classes).double() / len(labels)
    return (tau * prior.clamp_min(0.5 / len(labels)).log()).float()


@dataclass(frozen=True)
class FedDiffAlgorithm(ClassifierAlgorithm):
    """A client holding one modality trains its branch with its site partner's relayed outputs; one
    holding both (centralized FedDiff) runs the whole model; the single-modality variants
    (``feddiff_hsi``, ``feddiff_lidar``) need no partner."""

    exchange: bool = True  # False: one client holds both modalities (centralized FedDiff)

    def owner(self, parameter: str) -> str | None:
        for modality in MODALITIES:
            if parameter.startswith(f"{modality}_branch."):
                return modality
        return None

    @property
    def exchanges_features(self) -> bool:
        return self.exchange and len(self.modalities) == 2

    def calibration_layer(self) -> str:
        # the last 1×1 convolution of the head whose logits the model predicts with
        heads: dict[Modalities, str] = {("hsi",): "head2", ("lidar",): "head3"}
        head = heads.get(tuple(self.modalities), "head1")
        return f"{head}.net.7"

    def scores_whole_model(self, client_modalities: Modalities) -> bool:
        # with the exchange every client assembles the whole fused representation of its pixels
        return (self.exchanges_features and bool(self.usable_modalities(client_modalities))
                or super().scores_whole_model(client_modalities))

    def client_predict(self, model: nn.Module, data: dict[str, Any], client_modalities: Modalities,
                       config: dict[str, Any], partner: dict[str, torch.Tensor] | None = None,
                       tally: CrossEntropyTally | None = None) -> np.ndarray:
        if not self.exchanges_features:
            return super().client_predict(model, data, client_modalities, config, tally=tally)
        if partner is None:
            raise ValueError("feddiff: a client holding one modality needs its site partner's branch outputs")
        (modality,) = self.usable_modalities(client_modalities)
        return self.predict(model, data, config, (modality,), partner=partner, tally=tally)

    def client_features(self, model: nn.Module, data: dict[str, Any], client_modalities: Modalities,
                        config: dict[str, Any], partner: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        assert isinstance(model, FedDiffClassifier)
        usable = self.usable_modalities(client_modalities)
        if partner is None and self.exchanges_features:
            raise ValueError("feddiff: a client holding one modality needs its site partner's branch outputs")
        cfg = TrainConfig.from_dict(inference_config(config))
        inputs = {m: branch_inputs(data, m, model.spec) for m in usable}

        def forward(sl: slice, device: torch.device) -> Any:
            live = {m: (p[sl].to(device), None if f is None else f[sl].to(device)) for m, (p, f) in inputs.items()}
            if partner is None:
                return model(**{m: v[0] for m, v in live.items()}, **{f"{m}_features": v[1] for m, v in live.items()})
            (modality,) = usable
            cnn, diff = getattr(model, f"{modality}_branch")(*live[modality])
            other = partner["cnn"][sl].to(device), partner["diff"][sl].to(device)
            return model.fuse(cnn, diff, *other) if modality == "hsi" else model.fuse(*other, cnn, diff)

        return layer_inputs(model, self.calibration_layer(), len(data["labels"]), cfg, forward)

    def build_model(self, spec: dict[str, Any]) -> FedDiffClassifier:
        return FedDiffClassifier(FedDiffSpec.from_dict({**spec, "modalities": list(self.modalities)}))

    def client_exchange(self, model: nn.Module, data: dict[str, Any], client_modalities: Modalities,
                        config: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The client's branch outputs on its own pixels: all that its partner receives."""
        assert isinstance(model, FedDiffClassifier)
        (modality,) = self.usable_modalities(client_modalities)
        mode = FedDiffTraining.split(config)[1].exchange_bn
        # eval: BatchNorm with the global running statistics; train: with this client's batch statistics,
        # as its own branch runs while it trains (the running statistics of this copy are discarded)
        cfg = TrainConfig.from_dict(inference_config(config))
        policy = cfg.policy()
        branch = getattr(model, f"{modality}_branch").to(policy.device).train(mode == "train")
        patches, features = branch_inputs(data, modality, model.spec)
        outs: dict[str, list[torch.Tensor]] = {"cnn": [], "diff": []}
        with torch.inference_mode():
            for sl in inference_batches(len(patches), cfg.eval_batch_size):
                with policy.autocast():
                    cnn, diff = branch(patches[sl].to(policy.device),
                                       None if features is None else features[sl].to(policy.device))
                outs["cnn"].append(cnn.float().cpu())
                outs["diff"].append(diff.float().cpu())
        return {k: torch.cat(v) for k, v in outs.items()}

    def client_objective(self, model: nn.Module, data: dict[str, Any], client_modalities: Modalities,
                         config: dict[str, Any], rnd: int = 1,
                         partner: dict[str, torch.Tensor] | None = None) -> Objective:
        assert isinstance(model, FedDiffClassifier)
        usable = self.usable_modalities(client_modalities)
        if partner is None and self.exchanges_features:
            raise ValueError("feddiff: a client holding one modality needs its site partner's branch outputs")
        cfg, own = FedDiffTraining.split(config)
        weight_term = own.weight_term
        if own.weight_term_mode == "decoupled":  # λ·Σ‖W‖² as decay outside Adam
            cfg, weight_term = replace(cfg, decoupled_decay={"conv": weight_term}), 0.0
        keys = self.client_keys(model, client_modalities)
        trainable = self.trainable(model, client_modalities)
        conv_weights = [p for n, p in model.named_parameters() if n in trainable and p.ndim == 4]
        labels = torch.as_tensor(np.asarray(data["labels"]), dtype=torch.long)
        if partner is not None and len(partner["cnn"]) != len(labels):
            raise ValueError(f"feddiff: partner sent {len(partner['cnn'])} outputs for {len(labels)} pixels")
        inputs = {m: branch_inputs(data, m, model.spec) for m in usable}
        absent = None
        if own.present_classes_only:
            absent = torch.ones(model.spec.num_classes, dtype=torch.bool)
            absent[labels.unique()] = False
        adjustment = (prior_adjustment(labels, model.spec.num_classes, own.logit_adjustment)
                      if own.logit_adjustment else None)

        def loss(batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
            live = {m: (batch.take(p), None if f is None else batch.take(f)) for m, (p, f) in inputs.items()}
            if partner is None:  # every branch this model has is live here
                outs = model(**{m: v[0] for m, v in live.items()}, **{f"{m}_features": v[1] for m, v in live.items()})
            else:
                (modality,) = usable
                cnn, diff = getattr(model, f"{modality}_branch")(*live[modality])
                other = batch.take(partner["cnn"]), batch.take(partner["diff"])
                outs = model.fuse(cnn, diff, *other) if modality == "hsi" else model.fuse(*other, cnn, diff)
            if absent is not None:  # a class this client never sees is not pushed down in its softmax
                outs = (outs[0].masked_fill(absent.to(outs[0].device), float("-inf")), *outs[1:])
            if adjustment is not None:
                outs = tuple(o + adjustment.to(o.device) for o in outs)
            y = batch.take(labels, torch.long)
            ce, consistency = feddiff_loss_terms(outs, y, detach_target=own.consistency_target == "detached")
            unimodal = unimodal_cross_entropy(outs, y)  # logged always: how well each modality alone classifies
            penalty = conv_weight_penalty(weights=conv_weights) if conv_weights else ce.new_zeros(())
            value = ce + consistency + weight_term * penalty
            if own.unimodal_ce:
                value = value + own.unimodal_ce * unimodal
            return value, {"ce": float(ce.detach()), "consistency": float(consistency.detach()),
                           "unimodal_ce": float(unimodal.detach()), "conv_weight_norm2": float(penalty.detach())}

        return Objective(int(len(labels)), loss, cfg, trainable, keys)

    def prepare(self, artifact: dict[str, Any], data: dict[str, Any],
                config: dict[str, Any] | None = None) -> dict[str, Any]:
        """Add the diffusion features computed with the artefact's global U-Nets (server side)."""
        spec = FedDiffSpec.from_dict(artifact["spec"])
        out = dict(data)
        for modality in self.modalities:
            if not spec.diffuses(modality) or f"{modality}_features" in data or modality not in data:
                continue
            entry = (artifact.get("unets") or {}).get(modality)
            if entry is None:
                raise ValueError(f"{artifact['algorithm']}: the artefact has no {modality} U-Net to compute the "
                                 "diffusion features this model needs")
            unet = DiffusionUNet(UNetSpec.from_dict(entry["spec"]))
            unet.load_state_dict(entry["state"])
            policy = TrainConfig.from_dict(inference_config(config)).policy()
            out[f"{modality}_features"] = diffusion_feature_bundle(unet, data[modality], list(spec.timesteps),
                                                                   spec.feature_seed, policy)
        return out

    def predict(self, model: nn.Module, data: dict[str, Any], config: dict[str, Any],
                modalities: Modalities | None = None, partner: dict[str, torch.Tensor] | None = None,
                *, tally: CrossEntropyTally | None = None, **forward: Any) -> np.ndarray:
        """o1 of the assembled model; with ``modalities`` naming one of two, the other branch's
        outputs are ``partner``'s (its site partner's, on a client) or zero-filled (the
        single-modality evaluation of the two-branch model)."""
        assert isinstance(model, FedDiffClassifier)
        cfg = TrainConfig.from_dict(inference_config(config))
        model.to(cfg.policy().device).eval()
        use = tuple(self.modalities if modalities is None else modalities)
        tensors = {m: branch_inputs(data, m, model.spec) for m in use}

        def logits(sl: slice, device: torch.device) -> torch.Tensor:
            live = {m: (p[sl].to(device), None if f is None else f[sl].to(device)) for m, (p, f) in tensors.items()}
            if len(self.modalities) == 1:
                return model(**{m: v[0] for m, v in live.items()},
                             **{f"{m}_features": v[1] for m, v in live.items()})[0]
            outputs = {m: getattr(model, f"{m}_branch")(*v) for m, v in live.items()}
            if partner is not None:
                (other,) = set(self.modalities) - set(use)
                outputs[other] = partner["cnn"][sl].to(device), partner["diff"][sl].to(device)
            ref = next(iter(outputs.values()))[0]
            cnn_h, diff_h = outputs.get("hsi", (torch.zeros_like(ref), torch.zeros_like(ref)))
            cnn_l, diff_l = outputs.get("lidar", (torch.zeros_like(ref), torch.zeros_like(ref)))
            return model.fuse(cnn_h, diff_h, cnn_l, diff_l)[0]

        return predict_batches(len(data[use[0]]), cfg, logits, tally)
