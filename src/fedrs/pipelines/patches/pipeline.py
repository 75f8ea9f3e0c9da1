from kedro.pipeline import Pipeline, node

from fedrs.pipelines.patches.nodes import build_patch_sets, fit_normalisation, split_training_pixels


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(split_training_pixels, ["scene", "params:patches", "params:compute"], ["pixel_split", "split_plot"],
                 name="split_training_pixels"),
            node(fit_normalisation, ["scene", "pixel_split", "params:patches"], "normalisation",
                 name="fit_normalisation"),
            node(build_patch_sets, ["scene", "pixel_split", "normalisation", "params:patches"],
                 ["train_patches", "validation_patches", "test_patches"], name="build_patch_sets"),
        ]
    )
