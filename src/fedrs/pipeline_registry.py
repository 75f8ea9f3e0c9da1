"""Project pipelines.

- data: ``ingest``, ``patches``, ``partition`` (and ``data`` = all three)
- one per algorithm (data + training + the shared evaluation template under its namespace):
  the baselines, ``baselines`` = all of them, ``fedcmi`` and ``feddiff``
- ``report``: the comparison of every algorithm that has results on disk (run it after them)
- ``__default__``: every data and algorithm pipeline (not the report, which reads their files)
"""

from __future__ import annotations

from kedro.pipeline import Pipeline

from fedrs.pipelines import evaluation, feddiff, ingest, partition, patches, report, training


def register_pipelines() -> dict[str, Pipeline]:
    data = ingest.create_pipeline() + patches.create_pipeline() + partition.create_pipeline()
    pipelines: dict[str, Pipeline] = {
        "ingest": ingest.create_pipeline(),
        "patches": patches.create_pipeline(),
        "partition": partition.create_pipeline(),
        "data": data,
    }
    for algorithm in (*training.BASELINES, *training.ALGORITHMS):
        pipelines[algorithm] = data + training.create_pipeline(algorithm) + evaluation.create_pipeline(algorithm)
    pipelines["feddiff"] = data + feddiff.create_pipeline()
    pipelines["feddiff_centralized"] = data + feddiff.create_centralized_pipeline()
    pipelines["baselines"] = sum((pipelines[a] for a in training.BASELINES), Pipeline([]))
    pipelines["__default__"] = (pipelines["baselines"] + pipelines["feddiff"] + pipelines["feddiff_centralized"]
                                + sum((pipelines[a] for a in training.ALGORITHMS), Pipeline([])))
    pipelines["report"] = report.create_pipeline()
    return pipelines
