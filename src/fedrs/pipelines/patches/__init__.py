from fedrs.pipelines.patches.pipeline import create_pipeline

__all__ = ["create_pipeline"]
