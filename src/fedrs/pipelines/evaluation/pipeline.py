"""The evaluation template, instantiated per algorithm under its namespace.

Reads ``<algo>.model`` and ``<algo>.history``; writes ``<algo>.metrics`` (JSON: the test scores —
the one look at the test pixels —, the validation scores every choice is made on, and a summary of
the run that produced them), the confusion matrix, the predicted map (array and figure)
and the curves (figures, also logged to MLflow), the MLflow metrics and the registered MLflow model.
"""

from kedro.pipeline import Pipeline, node, pipeline

from fedrs.pipelines.evaluation.nodes import classification_map, curves, evaluate, mlflow_metrics, torch_module


def create_template() -> Pipeline:
    return Pipeline([
        node(evaluate, ["model", "test_patches", "validation_patches", "history", "params:evaluation",
                        "params:compute"],
             ["metrics", "confusion_plot"], name="evaluate"),
        node(classification_map, ["model", "scene", "normalisation", "params:patches", "params:evaluation",
                                  "params:compute"],
             ["prediction", "classification_map_plot"], name="classification_map"),
        node(curves, "history", "curves_plot", name="curves"),
        node(mlflow_metrics, ["metrics", "history"], "mlflow_metrics", name="mlflow_metrics"),
        node(torch_module, "model", "mlflow_model", name="mlflow_model"),
    ])


def create_pipeline(algorithm: str, test_inputs: str = "test_patches",
                    validation_inputs: str = "validation_patches") -> Pipeline:
    """``test_inputs``, ``validation_inputs``: what the model is scored on (FedDiff: the patches with
    their diffusion features)."""
    return pipeline(create_template(), namespace=algorithm,
                    inputs={"test_patches": test_inputs, "validation_patches": validation_inputs, "scene": "scene",
                            "normalisation": "normalisation"},
                    parameters={k: k for k in ("params:evaluation", "params:patches", "params:compute")})
