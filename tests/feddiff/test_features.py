"""FedDiff's stage 2 on the clients: every client featurises its own pixels with the global U-Nets
it receives, keeps them in its own store, and stage 3 reads them there by digest."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedrs.feddiff.ddpm import diffusion_feature_bundle
from fedrs.feddiff.features import FeatureJob, FeatureSettings, feature_key, run_feature_job
from fedrs.feddiff.unet import DiffusionUNet, UNetSpec
from tests.federated.fake_grid import FakeGrid


def _unets(fed: dict) -> dict:
    torch.manual_seed(0)
    out = {}
    for modality, channels in (("hsi", fed["test"]["hsi"].shape[1]), ("lidar", fed["test"]["lidar"].shape[1])):
        spec = {"in_channels": int(channels), "base_channels": 8, "steps": 50}
        out[modality] = {"spec": spec, "state": DiffusionUNet(UNetSpec.from_dict(spec)).state_dict()}
    return out


def _job(fed: dict, store, **kw) -> FeatureJob:
    return FeatureJob(unets=kw.pop("unets"), timesteps=[5, 20], seed=3, partition_dir=fed["dir"], store=str(store),
                      **kw)


def _patch_counts(fed: dict) -> dict[int, int]:
    from fedrs.datasets import NpzDataset

    return {c: {k: len(v) for k, v in NpzDataset(f"{fed['dir']}/client_{c:03d}.npz").load().items()
                if k in ("labels", "validation_labels")} for c in range(fed["num_clients"])}


def test_clients_featurise_their_own_pixels_and_reuse_an_unchanged_model(tiny_split_federation, tmp_path):
    fed, unets = tiny_split_federation, _unets(tiny_split_federation)
    grid = FakeGrid(fed["num_clients"])
    first = run_feature_job(grid, _job(fed, tmp_path, unets=unets), fed["num_clients"])
    counts = _patch_counts(fed)
    # every client has features of its own modality only, of its training and of its validation pixels:
    # [its pixels, 2C × 2 timesteps, 4, 4]
    for cid, shapes in first["clients"].items():
        ((modality, shape), (validation, validation_shape)) = shapes.items()
        assert shape == [counts[int(cid)]["labels"], 32, 4, 4] and validation == f"validation {modality}"
        assert validation_shape == [counts[int(cid)]["validation_labels"], 32, 4, 4]
    assert first["reused_from_cache"] == [] and sorted(first["unets"]) == ["hsi", "lidar"]
    stored = sorted(p.name for p in tmp_path.glob("*.npy"))
    assert len(stored) == 2 * fed["num_clients"]
    # what went down: each client got only its modality's U-Net; what came back: no array at all
    for msg in grid.sent:
        if msg.metadata.message_type == "query.features":
            assert len(list(msg.content.array_records)) == 1
    for reply in grid.received:
        assert not list(reply.content.array_records)
    down = [t for t in first["traffic"] if t["payload"] == "unet"]
    assert len(down) == fed["num_clients"] and all(t["bytes_sent"] > 0 for t in down)

    second = run_feature_job(FakeGrid(fed["num_clients"]), _job(fed, tmp_path, unets=unets), fed["num_clients"])
    assert second["reused_from_cache"] == sorted(int(c) for c in first["clients"])
    # a changed LiDAR U-Net: the HSI holders reuse, the LiDAR holders compute anew (new files)
    unets["lidar"]["state"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in unets["lidar"]["state"].items()}
    third = run_feature_job(FakeGrid(fed["num_clients"]), _job(fed, tmp_path, unets=unets), fed["num_clients"])
    hsi_holders = sorted(int(c) for c, s in first["clients"].items() if "hsi" in s)
    assert third["reused_from_cache"] == hsi_holders and third["unets"]["lidar"] != first["unets"]["lidar"]
    assert len(list(tmp_path.glob("lidar-*.npy"))) == 2 * (2 * len(first["clients"]) - 2 * len(hsi_holders))


def test_stage_three_reads_the_features_by_digest_and_refuses_without_them(tiny_split_federation, tmp_path):
    from fedrs.federated.client_app import client_data
    from fedrs.federated.server.messaging import make_message

    fed, unets = tiny_split_federation, _unets(tiny_split_federation)
    grid = FakeGrid(fed["num_clients"])
    manifest = run_feature_job(grid, _job(fed, tmp_path, unets=unets), fed["num_clients"])
    settings = {"partition_dir": fed["dir"], "client_features": manifest["settings"]}
    node = next(iter(grid.contexts))
    _, data = client_data(make_message({}, settings, node, "train", 1), grid.contexts[node])
    (modality,) = data["modalities"]
    key = feature_key(modality, manifest["unets"][modality], data[modality], [5, 20], 3, "fp32")
    np.testing.assert_array_equal(data[f"{modality}_features"], np.load(tmp_path / f"{key}.npy"))
    # what the client computed is what the server computes for the same pixels (scoring, maps)
    unet = DiffusionUNet(UNetSpec.from_dict(unets[modality]["spec"]))
    unet.load_state_dict(unets[modality]["state"])
    expected = diffusion_feature_bundle(unet, data[modality], [5, 20], 3)
    np.testing.assert_array_equal(data[f"{modality}_features"], expected)
    # its validation pixels' features too (validation: clients), under the same names
    _, held = client_data(make_message({}, {**settings, "split": "validation"}, node, "train", 1), grid.contexts[node])
    assert len(held["labels"]) == len(held[modality]) != len(data["labels"]) and "validation_labels" not in held
    np.testing.assert_array_equal(held[f"{modality}_features"],
                                  diffusion_feature_bundle(unet, held[modality], [5, 20], 3))
    # features of another U-Net, or an empty store: a clear refusal, never zeros
    other = {**manifest["settings"], "unets": {"hsi": "0" * 16, "lidar": "0" * 16}}
    with pytest.raises(FileNotFoundError, match="stage 2"):
        client_data(make_message({}, {**settings, "client_features": other}, node, "train", 1), grid.contexts[node])
    assert FeatureSettings.from_dict(manifest["settings"]).store == str(tmp_path)


def test_a_deployed_node_keeps_features_in_its_own_store(tiny_split_federation, tmp_path):
    """A SuperNode's ``feature-cache-dir`` wins over whatever folder the job names."""
    fed, unets = tiny_split_federation, _unets(tiny_split_federation)
    grid = FakeGrid(fed["num_clients"])
    for node, context in grid.contexts.items():
        context.node_config["feature-cache-dir"] = str(tmp_path / f"org{node}")
    run_feature_job(grid, _job(fed, tmp_path / "elsewhere", unets=unets), fed["num_clients"])
    assert not (tmp_path / "elsewhere").exists()
    assert all(len(list((tmp_path / f"org{n}").glob("*.npy"))) == 2 for n in grid.contexts)


def test_a_client_that_cannot_featurise_fails_the_stage(tiny_split_federation, tmp_path):
    fed, unets = tiny_split_federation, _unets(tiny_split_federation)
    unets["hsi"] = {**unets["hsi"], "spec": {**unets["hsi"]["spec"], "base_channels": 4}}  # weights do not fit
    with pytest.raises(RuntimeError, match="have no features"):
        run_feature_job(FakeGrid(fed["num_clients"]), _job(fed, tmp_path, unets=unets), fed["num_clients"])
