"""FedDiff: data → federated diffusion models → diffusion features → federated classifier with the
feature exchange → the shared evaluation, all under the ``feddiff`` namespace."""

from kedro.pipeline import Pipeline, node, pipeline

from fedrs.pipelines.evaluation.pipeline import create_template as evaluation_template
from fedrs.pipelines.feddiff.nodes import (extract_features, train_classifier, train_classifier_pooled,
                                           train_diffusion, train_diffusion_pooled)

SHARED = {"test_patches", "modality_split.federation_manifest", "modality_split.client_partitions",
          "modality_split.client_partition_dir"}


def create_pipeline(**kwargs) -> Pipeline:
    stages = Pipeline([
        node(train_diffusion, ["modality_split.federation_manifest", "modality_split.client_partition_dir",
                               "checkpoint_dir", "test_patches", "params:feddiff"],
             ["unets", "diffusion_history"], name="train_diffusion"),
        node(extract_features, ["unets", "modality_split.federation_manifest", "modality_split.client_partitions",
                                "feature_cache_dir", "params:feddiff"], ["client_features", "features_manifest"], name="extract_features"),
        node(train_classifier, ["modality_split.federation_manifest", "modality_split.client_partition_dir",
                                "client_features_dir", "features_manifest", "checkpoint_dir", "unets", "test_patches",
                                "params:feddiff"], ["model", "history", "traffic", "test_inputs"],
             name="train_classifier"),
    ])
    trained = pipeline(stages, namespace="feddiff", inputs=SHARED, parameters={"params:feddiff": "params:feddiff"})
    return trained + _evaluated("feddiff")


def _evaluated(namespace: str) -> Pipeline:
    return pipeline(evaluation_template(), namespace=namespace,
                    inputs={"test_patches": f"{namespace}.test_inputs", "scene": "scene", "normalisation": "normalisation"},
                    parameters={"params:evaluation": "params:evaluation", "params:patches": "params:patches"})


def create_centralized_pipeline(**kwargs) -> Pipeline:
    """The upper bound: the same FedDiff stages with every training pixel and both modalities pooled."""
    stages = Pipeline([
        node(train_diffusion_pooled, ["train_patches", "test_patches", "params:feddiff"],
             ["unets", "diffusion_history"], name="train_diffusion"),
        node(train_classifier_pooled, ["train_patches", "unets", "test_patches", "params:feddiff"],
             ["model", "history", "traffic", "test_inputs"], name="train_classifier"),
    ])
    trained = pipeline(stages, namespace="feddiff_centralized", inputs={"train_patches", "test_patches"},
                       parameters={"params:feddiff": "params:feddiff"})
    return trained + _evaluated("feddiff_centralized")
