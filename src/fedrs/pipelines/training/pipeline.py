"""One training pipeline per baseline, each under its algorithm's namespace.

Every algorithm reads the shared ``params:baseline`` block and its own ``params:<algo>.training``
overrides, and writes ``<algo>.model``, ``<algo>.history`` and ``<algo>.traffic``.
"""

from kedro.pipeline import Pipeline, node, pipeline

from fedrs.federated.algorithms import BASELINES, HORIZONTAL
from fedrs.pipelines.training.nodes import train_each_client, train_federated, train_pooled

# the baselines, and the paper's algorithm trained by the same federated node on the same partition
ALGORITHMS = HORIZONTAL
__all__ = ["ALGORITHMS", "BASELINES", "create_pipeline"]
OUTPUTS = ["model", "history", "traffic"]


def _template(algorithm: str) -> Pipeline:
    if algorithm == "centralized":
        return Pipeline([node(train_pooled, ["train_patches", "validation_patches", "params:baseline",
                                             "params:training", "params:compute"],
                              OUTPUTS, name="train")])
    if algorithm == "local":
        return Pipeline([node(train_each_client, ["horizontal.federation_manifest", "horizontal.client_partitions",
                                                  "validation_patches", "params:baseline", "params:training",
                                                  "params:compute"],
                              OUTPUTS, name="train")])
    return Pipeline([node(train_federated, ["horizontal.federation_manifest", "horizontal.client_partition_dir",
                                            "checkpoint_dir", "deployment_dir", "validation_patches", "params:baseline",
                                            "params:training", "params:federation", "params:compute"],
                          OUTPUTS, name="train")])


def create_pipeline(algorithm: str) -> Pipeline:
    shared = {"train_patches", "validation_patches", "horizontal.federation_manifest", "horizontal.client_partitions",
              "horizontal.client_partition_dir"}
    template = _template(algorithm)
    return pipeline(template, namespace=algorithm, inputs=shared & set(template.inputs()),
                    parameters={k: k for k in ("params:baseline", "params:federation", "params:compute")
                                if k in template.inputs()})
