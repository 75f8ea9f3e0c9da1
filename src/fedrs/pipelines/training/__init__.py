from fedrs.pipelines.training.pipeline import ALGORITHMS, BASELINES, create_pipeline

__all__ = ["ALGORITHMS", "BASELINES", "create_pipeline"]
