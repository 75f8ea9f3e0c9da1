"""What a run leaves behind: merged parameters, the artefact, the history and the summary kept in git
(traffic, time and lost clients over every stage, FedDiff's earlier stages included)."""

import numpy as np

from fedrs.results import lost_clients, merge, model_spec, run_history, run_summary


def test_merge_is_recursive_and_leaves_its_inputs_alone():
    base = {"train": {"lr": 0.1, "epochs": 2}, "model": {"dim": 8}}
    override = {"train": {"lr": 0.01}, "federated": {"num_rounds": 3}}
    merged = merge(base, override)
    assert merged == {"train": {"lr": 0.01, "epochs": 2}, "model": {"dim": 8}, "federated": {"num_rounds": 3}}
    assert base["train"]["lr"] == 0.1 and merge(base, None) == base and merge(base, None) is not base


def test_a_spec_takes_the_shapes_from_the_data():


    patches = {"hsi": np.zeros((2, 9, 7, 7)), "lidar": np.zeros((2, 2, 7, 7)), "num_classes": 4}
    assert model_spec(patches, {"dim": 8}) == {"bands": 9, "lidar_channels": 2, "num_classes": 4, "dim": 8}


def test_the_summary_counts_every_stage_and_every_lost_client():
    rounds = [{"round": 1, "train_loss": 2.0, "val_oa": 0.4, "bytes_up": 10, "bytes_down": 20, "bytes_up_dense": 40,
               "bytes_down_dense": 40, "failed": [{"client_id": 1}], "dropped": [], "rejected": [], "aggregated": True},
              {"round": 2, "train_loss": 1.0, "val_oa": 0.6, "bytes_up": 10, "bytes_down": 20, "failed": [],
               "dropped": [{"client_id": 2}], "rejected": [], "aggregated": False, "loss_growing_rounds": 0,
               "val_oa_before_calibration": 0.5}]
    diffusion = {"rounds": [], "stages": {"hsi": [{"round": 1, "bytes_up": 5, "bytes_down": 5}]}, "wall_seconds": 3.0}
    history = {**run_history("feddiff", rounds, started=0.0), "earlier_stages": [diffusion]}
    summary = run_summary(history)
    assert summary["num_rounds"] == 2 and [r["val_oa"] for r in summary["rounds"]] == [0.4, 0.6]
    assert summary["bytes_sent"] == 70 and summary["bytes_dense"] == 80 + 30 + 10
    assert summary["clients_failed"] == 1 and summary["clients_dropped"] == 1 and summary["lost_clients"]
    assert summary["rounds_not_aggregated"] == 1 and summary["oa_before_calibration"] == 0.5
    assert summary["wall_seconds"] >= 3.0 and summary["compute"]["precision"] == "fp32"
    # a training loss that grew: the global model's validation loss over the same rounds goes with the warning
    creep = [{"round": r, "train_loss": t, "val_loss": v, "loss_growing_rounds": g}
             for r, t, v, g in ((1, 0.60, 0.50, 0), (2, 0.65, 0.45, 1), (3, 0.70, 0.44, 2))]
    summary = run_summary(run_history("fedavg", creep, started=0.0))
    assert summary["loss_growing_rounds"] == 2 and summary["val_loss_over_growth"] == [0.50, 0.44]
    assert [r["val_loss"] for r in summary["rounds"]] == [0.50, 0.45, 0.44]
    assert "val_loss_over_growth" not in run_summary(run_history("fedavg", creep[:1], started=0.0))
    assert lost_clients([]) == {"clients_failed": 0, "clients_dropped": 0, "updates_rejected": 0,
                                "rounds_not_aggregated": 0}
