"""Project pipelines: data preparation now; algorithms register here as they land."""

from __future__ import annotations

from kedro.pipeline import Pipeline

from fedrs.pipelines import ingest, partition, patches


def register_pipelines() -> dict[str, Pipeline]:
    data = ingest.create_pipeline() + patches.create_pipeline() + partition.create_pipeline()
    return {
        "ingest": ingest.create_pipeline(),
        "patches": patches.create_pipeline(),
        "partition": partition.create_pipeline(),
        "data": data,
        "__default__": data,
    }
