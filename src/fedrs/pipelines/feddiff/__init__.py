from fedrs.pipelines.feddiff.pipeline import create_centralized_pipeline, create_pipeline

__all__ = ["create_centralized_pipeline", "create_pipeline"]
