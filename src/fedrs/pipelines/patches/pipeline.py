from kedro.pipeline import Pipeline, node

from fedrs.pipelines.patches.nodes import build_patch_sets, fit_normalisation


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(fit_normalisation, ["scene", "params:patches"], "normalisation", name="fit_normalisation"),
            node(build_patch_sets, ["scene", "normalisation", "params:patches"],
                 ["train_patches", "test_patches"], name="build_patch_sets"),
        ]
    )
