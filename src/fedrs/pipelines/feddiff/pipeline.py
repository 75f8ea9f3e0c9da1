"""FedDiff: data → federated diffusion models → diffusion features → federated classifier with the
feature exchange → the shared evaluation, all under the ``feddiff`` namespace."""

from kedro.pipeline import Pipeline, node, pipeline

from fedrs.pipelines.evaluation.pipeline import create_pipeline as evaluation_pipeline
from fedrs.pipelines.feddiff.nodes import (
    extract_features,
    train_classifier,
    train_classifier_pooled,
    train_diffusion,
    train_diffusion_pooled,
)

SHARED = {"validation_patches", "test_patches", "modality_split.federation_manifest",
          "modality_split.client_partition_dir"}
PARAMETERS = {f"params:feddiff.{k}": f"params:feddiff.{k}"
              for k in ("diffusion", "features", "classifier", "resources")}
SHARED_PARAMETERS = {k: k for k in ("params:patches", "params:federation", "params:compute")}


def create_pipeline(**kwargs) -> Pipeline:
    stages = Pipeline([
        node(train_diffusion, ["modality_split.federation_manifest", "modality_split.client_partition_dir",
                               "checkpoint_dir", "deployment_dir", "validation_patches", "params:feddiff.diffusion",
                               "params:patches", "params:feddiff.resources", "params:federation",
                               "params:compute"],
             ["unets", "diffusion_history"], name="train_diffusion"),
        node(extract_features, ["unets", "modality_split.federation_manifest", "modality_split.client_partition_dir",
                                "feature_cache_dir", "deployment_dir", "params:feddiff.features",
                                "params:feddiff.resources", "params:federation", "params:compute"],
             "features_manifest", name="extract_features"),
        node(train_classifier, ["modality_split.federation_manifest", "modality_split.client_partition_dir",
                                "features_manifest", "checkpoint_dir", "deployment_dir", "unets",
                                "diffusion_history", "validation_patches", "test_patches",
                                "params:feddiff.diffusion", "params:feddiff.classifier", "params:patches",
                                "params:feddiff.resources", "params:federation", "params:compute"],
             ["model", "history", "traffic", "validation_inputs", "test_inputs"], name="train_classifier"),
    ])
    trained = pipeline(stages, namespace="feddiff", inputs=SHARED,
                       parameters={**PARAMETERS, **SHARED_PARAMETERS})
    return trained + evaluation_pipeline("feddiff", "feddiff.test_inputs", "feddiff.validation_inputs")


def create_centralized_pipeline(**kwargs) -> Pipeline:
    """The upper bound: the same FedDiff stages with every training pixel and both modalities pooled."""
    stages = Pipeline([
        node(train_diffusion_pooled, ["train_patches", "validation_patches", "params:feddiff.diffusion",
                                      "params:patches", "params:compute"],
             ["unets", "diffusion_history"], name="train_diffusion"),
        node(train_classifier_pooled, ["train_patches", "unets", "diffusion_history", "validation_patches",
                                       "test_patches", "params:feddiff.diffusion", "params:feddiff.classifier",
                                       "params:feddiff.features", "params:patches", "params:compute"],
             ["model", "history", "traffic", "validation_inputs", "test_inputs"], name="train_classifier"),
    ])
    used = {k: v for k, v in {**PARAMETERS, **SHARED_PARAMETERS}.items() if k in stages.inputs()}
    trained = pipeline(stages, namespace="feddiff_centralized",
                       inputs={"train_patches", "validation_patches", "test_patches"},
                       parameters=used)
    return trained + evaluation_pipeline("feddiff_centralized", "feddiff_centralized.test_inputs",
                                         "feddiff_centralized.validation_inputs")
