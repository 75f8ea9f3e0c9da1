from fedrs.pipelines.feddiff.pipeline import create_pipeline

__all__ = ["create_pipeline"]
