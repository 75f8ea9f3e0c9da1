"""One partition template, instantiated per layout with a namespace.

``modality_split.*`` feeds FedDiff, ``horizontal.*`` FedCMI and the baselines; each instance reads
its own ``params:<layout>.partition`` block and writes its own catalog entries (dataset factories
``{layout}.federation_manifest`` etc. in the catalog).
"""

from kedro.pipeline import Pipeline, node, pipeline

from fedrs.pipelines.partition.nodes import partition_clients

LAYOUTS = ("modality_split", "horizontal")


def create_template() -> Pipeline:
    return Pipeline(
        [
            node(partition_clients, ["train_patches", "validation_patches", "params:partition", "params:compute"],
                 ["federation_manifest", "client_partitions", "partition_plot"], name="partition_clients"),
        ]
    )


def create_pipeline(**kwargs) -> Pipeline:
    return sum(
        (pipeline(create_template(), namespace=layout, inputs={"train_patches", "validation_patches"},
                  parameters={"params:compute": "params:compute"}) for layout in LAYOUTS),
        Pipeline([]),
    )
