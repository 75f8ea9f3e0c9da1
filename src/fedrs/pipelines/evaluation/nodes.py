"""Evaluation nodes, one modular pipeline reused for every algorithm under its namespace."""

from __future__ import annotations

from typing import Any

from matplotlib.figure import Figure
from torch import nn

from fedrs.compute import with_compute
from fedrs.evaluation import evaluate_artifact, load_model, predict_scene
from fedrs.federated.algorithm_base import inference_config
from fedrs.federated.local import TrainConfig
from fedrs.plots import classification_map_figure, confusion_figure, curves_figure
from fedrs.results import MLFLOW_ROUND_KEYS, MLFLOW_SUMMARY_KEYS, run_summary

VALIDATION_KEYS = ("oa", "aa", "kappa", "loss", "ece", "num_samples")
# the test scores MLflow logs at step 0 (loss, ece: the model's cross-entropy and calibration error;
# with temperature scaling also both before it)
TEST_KEYS = ("oa", "aa", "kappa", "per_class_spread", "loss", "ece", "loss_before_temperature",
             "ece_before_temperature")


def evaluate(model: dict[str, Any], test_patches: dict[str, Any], validation_patches: dict[str, Any],
             history: dict[str, Any], params: dict[str, Any], compute: dict[str, Any]) -> tuple[dict, Figure]:
    """The test scores, the validation scores (what the registry's champion and every tuning bench
    choose on), how they were computed, and a summary of the run that trained the model (so the
    report can be rebuilt from the metrics files alone)."""
    inference = with_compute(params.get("inference"), compute)
    report = evaluate_artifact(model, test_patches, inference)
    validation = evaluate_artifact(model, validation_patches, inference, variants=False)
    report["validation"] = {k: validation[k] for k in VALIDATION_KEYS if k in validation}
    report["evaluation"] = TrainConfig.from_dict(inference_config(inference)).policy().describe()
    report["run"] = run_summary(history)
    return report, confusion_figure(report, list(test_patches["class_names"]))


def classification_map(model: dict[str, Any], scene: dict[str, Any], normalisation: dict[str, Any],
                       patches: dict[str, Any], params: dict[str, Any], compute: dict[str, Any]
                       ) -> tuple[dict[str, Any], Figure]:
    """The predicted class of every pixel (kept for the report's side-by-side maps) and its figure."""
    prediction = predict_scene(model, scene, normalisation, int(patches["patch_size"]),
                               int(patches.get("inference_batch_size", 4096)),
                               with_compute(params.get("inference"), compute))
    return {"prediction": prediction}, classification_map_figure(prediction, scene, model["algorithm"])


def curves(history: dict[str, Any]) -> Figure:
    return curves_figure(history)


def mlflow_metrics(report: dict[str, Any], history: dict[str, Any]) -> dict[str, Any]:
    """Final scores at step 0 and per-round curves with the round as step, for kedro-mlflow (FedDiff:
    its DDPMs' rounds too, ``diffusion.<modality>.round.<key>``)."""
    metrics: dict[str, Any] = {k: {"value": float(report[k]), "step": 0} for k in TEST_KEYS if k in report}
    for key, value in report.get("validation", {}).items():
        metrics[f"val_{key}"] = {"value": float(value), "step": 0}
    for name, acc in report["per_class"].items():
        if acc is not None:
            metrics[f"class_acc.{name.replace(' ', '_')}"] = {"value": float(acc), "step": 0}
    for variant, scores in report.get("variants", {}).items():
        for key, value in scores.items():
            metrics[f"{variant}.{key}"] = {"value": float(value), "step": 0}
    rounds = history.get("rounds") or []
    for key in MLFLOW_ROUND_KEYS:
        points = [{"value": float(r[key]), "step": int(r["round"])} for r in rounds if r.get(key) is not None]
        if points:
            metrics[f"round.{key}"] = points
    for stage in history.get("earlier_stages") or []:  # FedDiff's DDPMs: loss and denoising per round
        for modality, stage_rounds in (stage.get("stages") or {}).items():
            for key in sorted({k for r in stage_rounds for k in r if k == "train_loss" or k.startswith("val_")}):
                points = [{"value": float(r[key]), "step": int(r["round"])} for r in stage_rounds
                          if isinstance(r.get(key), int | float)]
                if points:
                    metrics[f"diffusion.{modality}.round.{key}"] = points
    run = report.get("run", {})
    for key in MLFLOW_SUMMARY_KEYS:
        if key in run:
            metrics[key] = {"value": float(run[key]), "step": 0}
    return metrics


def torch_module(model: dict[str, Any]) -> nn.Module:
    return load_model(model)[1]
