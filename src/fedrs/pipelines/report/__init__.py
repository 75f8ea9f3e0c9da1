"""The comparison report over every algorithm that has results."""

from fedrs.pipelines.report.pipeline import create_pipeline

__all__ = ["create_pipeline"]
