"""The two references without federation: centralized (every pixel, one model) and local (each
client alone), with the federated runs' model, update and round structure."""

import numpy as np
import torch

from fedrs.datasets import NpzDataset
from fedrs.federated.server.config import FederatedConfig
from fedrs.federated.standalone import summarise_local, train_centralized, train_local


def _cfg(fed, **overrides):
    return FederatedConfig.from_dict({"algorithm": "centralized", "model": fed["spec"], "num_rounds": 2, "seed": 2,
                                      "eval_samples": 100, "train": {"epochs": 1, "batch_size": 8}, **overrides})


def _partitions(fed):
    return {i: NpzDataset(f"{fed['dir']}/client_{i:03d}.npz").load() for i in range(fed["num_clients"])}


def test_centralized_training_repeats_for_a_seed_and_records_every_round(tiny_federation):
    parts = _partitions(tiny_federation)
    pooled = {k: np.concatenate([p[k] for p in parts.values()]) for k in ("hsi", "lidar", "labels")}
    state, history = train_centralized(pooled, tiny_federation["test"], _cfg(tiny_federation))
    again, _ = train_centralized(pooled, tiny_federation["test"], _cfg(tiny_federation))
    assert all(torch.equal(state[k], again[k]) for k in state)
    assert [r["round"] for r in history] == [1, 2]
    assert all(r["bytes_up"] == 0 and r["bytes_down"] == 0 and 0 <= r["val_oa"] <= 1 for r in history)
    assert history[1]["lr"] < history[0]["lr"]  # the cosine schedule, as in the federated runs
    other, _ = train_centralized(pooled, tiny_federation["test"], _cfg(tiny_federation, seed=3))
    assert any(not torch.equal(state[k], other[k]) for k in state)


def test_centralized_flags_a_validation_loss_that_grows_round_after_round(tiny_federation):
    """Scored on its own training pixels with every label shifted by one class, the model's validation
    loss grows as it learns the true ones, while its training loss falls: the flag reads the former."""
    parts = _partitions(tiny_federation)
    pooled = {k: np.concatenate([p[k] for p in parts.values()]) for k in ("hsi", "lidar", "labels")}
    classes = int(tiny_federation["test"]["num_classes"])
    mislabelled = {**tiny_federation["test"], **{k: pooled[k] for k in ("hsi", "lidar")},
                   "labels": (pooled["labels"] + 1) % classes}
    cfg = _cfg(tiny_federation, num_rounds=6, loss_growth_rounds=3, lr_schedule="constant", eval_samples=None,
               train={"epochs": 2, "batch_size": 8, "lr": 0.01})
    _, history = train_centralized(pooled, mislabelled, cfg)
    assert history[-1]["val_loss_growing_rounds"] >= 3 and history[-1]["loss_growing_rounds"] == 0
    losses = [r["val_loss"] for r in history]
    streak = history[-1]["val_loss_growing_rounds"]  # the flag counts the rounds the loss rose, up to the last
    assert all(b > a for a, b in zip(losses[-streak - 1:-1], losses[-streak:], strict=True))
    assert history[0]["val_loss_growing_rounds"] == 0  # one round cannot grow


def test_local_clients_train_alone_and_are_summarised(tiny_federation):
    parts = _partitions(tiny_federation)
    results, states = train_local(parts, tiny_federation["test"], _cfg(tiny_federation, algorithm="local"))
    assert [r["client_id"] for r in results] == sorted(parts) and set(states) == set(parts)
    assert [r["num_samples"] for r in results] == [len(parts[c]["labels"]) for c in sorted(parts)]
    first = states[0]
    assert any(not torch.equal(first[k], states[1][k]) for k in first)  # each trained on its own pixels
    summary = summarise_local(results)
    oas = [r["val_oa"] for r in results]
    assert summary["worst_oa"] == min(oas) and summary["best_oa"] == max(oas)
    assert summary["mean_oa"] == np.mean(oas) and summary["median_client"] in parts


def test_centralized_training_fits_a_temperature_on_its_validation_pixels(tiny_federation):
    """As the federated runs' last pass: the last layer divided by T, no class changed, and the last
    round's row rescored (its loss no higher than before T, the scores before T kept)."""
    parts = _partitions(tiny_federation)
    pooled = {k: np.concatenate([p[k] for p in parts.values()]) for k in ("hsi", "lidar", "labels")}
    plain, plain_history = train_centralized(pooled, tiny_federation["test"], _cfg(tiny_federation))
    scaled, history = train_centralized(pooled, tiny_federation["test"], _cfg(tiny_federation, temperature={}))
    last = history[-1]
    temperature, layer = last["temperature"], "classifier.3"
    changed = {k for k in plain if not torch.equal(plain[k], scaled[k])}
    assert changed == {f"{layer}.weight", f"{layer}.bias"}
    torch.testing.assert_close(scaled[f"{layer}.weight"], plain[f"{layer}.weight"] / temperature)
    assert last["val_oa"] == last["val_oa_before_temperature"] == plain_history[-1]["val_oa"]
    assert last["val_loss_before_temperature"] == plain_history[-1]["val_loss"]
    assert last["val_loss"] <= last["val_loss_before_temperature"] + 1e-6
    assert history[0] == {**plain_history[0], "seconds": history[0]["seconds"]}  # the rounds before: untouched
