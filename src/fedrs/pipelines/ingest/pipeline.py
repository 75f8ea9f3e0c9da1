from kedro.pipeline import Pipeline, node

from fedrs.pipelines.ingest.nodes import build_scene, plot_scene, summarise_scene


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(build_scene, ["raw_hsi", "raw_lidar", "raw_train_labels", "raw_test_labels", "params:scene"],
                 "scene", name="build_scene"),
            node(summarise_scene, "scene", "scene_summary", name="summarise_scene"),
            node(plot_scene, "scene", "scene_overview_plot", name="plot_scene"),
        ]
    )
