from fedrs.pipelines.partition.pipeline import create_pipeline

__all__ = ["create_pipeline"]
