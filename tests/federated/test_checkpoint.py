"""Round checkpoints: written atomically (an interrupted write leaves the last good one), read back
whole, absent before the first round."""

import pytest
import torch

from fedrs.federated import checkpoint
from fedrs.federated.checkpoint import load_checkpoint, save_checkpoint


def test_a_checkpoint_round_trips_and_is_absent_before_the_first_round(tmp_path):
    assert load_checkpoint(tmp_path) is None
    state = {"round": 3, "state": {"w": torch.arange(4.0)}, "history": [{"round": 1}], "rng": {"seed": 1}}
    path = save_checkpoint(tmp_path, state)
    loaded = load_checkpoint(tmp_path)
    assert path.name == "checkpoint.pt" and loaded["round"] == 3 and loaded["history"] == [{"round": 1}]
    assert torch.equal(loaded["state"]["w"], torch.arange(4.0))


def test_an_interrupted_write_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, {"round": 1})

    def dies_half_way(obj, path):
        with open(path, "wb") as handle:
            handle.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, {"round": 2})
    assert load_checkpoint(tmp_path)["round"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary file left behind
