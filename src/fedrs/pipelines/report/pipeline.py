"""``report``: reads what the algorithm pipelines wrote (whichever have run) and compares them."""

from kedro.pipeline import Pipeline, node, pipeline

from fedrs.pipelines.report.nodes import build_report


def create_pipeline(**kwargs) -> Pipeline:
    template = Pipeline([
        node(build_report, ["metrics", "predictions", "privacy_curves", "scene", "params:report", "params:compute"],
             ["comparison", "rounds", "figures", "markdown", "html"], name="build_report"),
    ])
    return pipeline(template, namespace="report", inputs={"scene"}, parameters={"params:report": "params:report",
                                                                                 "params:compute": "params:compute"})
