import numpy as np


def test_the_paper_overlay_trains_the_ddpms_by_fedavg_not_one_shot_averaging():
    """1001 epochs in one round would average two independently trained models once; the overlay
    spreads the paper's epochs over rounds, and its classifier keeps FedFusion's 200 epochs."""
    import yaml

    from tests.conftest import REPO

    base = yaml.safe_load((REPO / "conf/base/parameters_feddiff.yml").read_text())["feddiff"]
    paper = yaml.safe_load((REPO / "conf/paper/parameters_feddiff.yml").read_text())["feddiff"]
    rounds, epochs = paper["diffusion"]["federated"]["num_rounds"], paper["diffusion"]["train"]["epochs"]
    assert rounds >= 50 and 990 <= rounds * epochs <= 1010
    assert paper["classifier"]["federated"]["num_rounds"] * paper["classifier"]["train"]["epochs"] == 200
    # the overlay changes sizes and restores the paper's two DDPMs: the stage-1 codec and the rest come from base
    assert "compression" in base["diffusion"]["federated"] and "compression" not in paper["diffusion"]["federated"]
    assert base["diffusion"]["modalities"] == [] and paper["diffusion"]["modalities"] == ["hsi", "lidar"]


def test_the_unet_size_of_the_patch_parameters_reaches_the_unet_and_the_classifier():
    from fedrs.federated.algorithms import get_algorithm
    from fedrs.pipelines.feddiff.nodes import classifier_spec, unet_spec

    patches = {"hsi": np.zeros((4, 6, 7, 7), np.float32), "lidar": np.zeros((4, 1, 7, 7), np.float32),
               "num_classes": 3}
    diffusion = {"model": {"base_channels": 8, "steps": 50}}
    spec = unet_spec(patches, "hsi", diffusion, {"unet_size": 12})
    assert spec["size"] == 12
    unets = {m: {"spec": unet_spec(patches, m, diffusion, {"unet_size": 12})} for m in ("hsi", "lidar")}
    classifier = classifier_spec(patches, unets, {"model": {}}, [5], 0)
    assert classifier["unet_size"] == 12 and classifier["hsi_feature_channels"] == 16
    ddpm = get_algorithm("ddpm_hsi")
    model = ddpm.build_model(spec)
    _, metrics = ddpm.client_update(model, {"hsi": np.random.default_rng(0).normal(size=(4, 6, 7, 7))},
                                    ("hsi",), {"epochs": 1, "batch_size": 2}, seed=0)
    assert np.isfinite(metrics["train_loss"])  # 7×7 patches resized to 12×12 train the 12×12 U-Net


def test_diffusion_modalities_decide_which_branches_get_a_stem():
    import pytest

    from fedrs.pipelines.feddiff.nodes import classifier_spec, diffusion_modalities, unet_spec

    assert diffusion_modalities({}) == ("hsi", "lidar")
    assert diffusion_modalities({"modalities": ["lidar", "hsi"]}) == ("hsi", "lidar")
    assert diffusion_modalities({"modalities": ["lidar"]}) == ("lidar",)
    assert diffusion_modalities({"modalities": []}) == ()  # no diffusion at all
    for bad in (["dsm"], ["lidar", "lidar"], "lidar", None):
        with pytest.raises(ValueError, match="feddiff.diffusion.modalities is"):
            diffusion_modalities({"modalities": bad})
    patches = {"hsi": np.zeros((4, 6, 7, 7), np.float32), "lidar": np.zeros((4, 1, 7, 7), np.float32),
               "num_classes": 3}
    diffusion = {"model": {"base_channels": 8, "steps": 50}}
    unets = {"lidar": {"spec": unet_spec(patches, "lidar", diffusion, {"unet_size": 8})}}
    spec = classifier_spec(patches, unets, {"model": {}}, [5, 20], 0)
    assert spec["diffusion_modalities"] == ["lidar"] and spec["hsi_feature_channels"] == 0
    assert spec["lidar_feature_channels"] == 2 * 8 * 2
    # stage 3 may use fewer of stage 1's U-Nets than it trained (the LiDAR-only ablation of a full run) ...
    both = {m: {"spec": unet_spec(patches, m, diffusion, {"unet_size": 8})} for m in ("hsi", "lidar")}
    fewer = classifier_spec(patches, both, {"model": {}}, [5], 0, ("lidar",))
    assert fewer["diffusion_modalities"] == ["lidar"] and fewer["hsi_feature_channels"] == 0
    # ... never more, and a classifier none of whose branches would use diffusion features is refused
    with pytest.raises(ValueError, match=r"names \['hsi'\], but stage 1 trained no DDPM"):
        classifier_spec(patches, unets, {"model": {}}, [5], 0, ("hsi", "lidar"))
    with pytest.raises(ValueError, match="share no modality.*use_diffusion: false"):
        classifier_spec(patches, both, {"model": {}, "modalities": ["hsi"]}, [5], 0, ("lidar",))
    plain = classifier_spec(patches, both, {"model": {"use_diffusion": False}, "modalities": ["hsi"]}, [5], 0,
                            ("lidar",))
    assert plain["use_diffusion"] is False
    # no DDPM at all: no stem, no feature channels, and the branches still see patches at patches.unet_size
    bare = classifier_spec(patches, {}, {"model": {}}, [5], 0, (), unet_size=6)
    assert bare["use_diffusion"] is False and bare["diffusion_modalities"] == [] and bare["unet_size"] == 6
    assert bare["hsi_feature_channels"] == bare["lidar_feature_channels"] == 0
    with pytest.raises(ValueError, match="share no modality"):  # asking for features no stage 1 made
        classifier_spec(patches, {}, {"model": {"use_diffusion": True}}, [5], 0, (), unet_size=6)
    with pytest.raises(ValueError, match=r"patches.unet_size is 6, but stage 1's U-Nets take \{'lidar': 8\}"):
        classifier_spec(patches, unets, {"model": {}}, [5], 0, ("lidar",), unet_size=6)
