"""Which failures a run survives and which stop it; the loss-trend warning."""

import pytest

from fedrs.federated.server.record import RoundRecord
from fedrs.federated.server.watch import FailureWatch, SystematicFailure, loss_growth


def _record(sampled, failed=(), dropped=(), rnd=1):
    record = RoundRecord(rnd, 1e-3, {}, list(sampled))
    record.failed = [{"client_id": c, "stage": "train", "error": f"Traceback ...\nValueError: {msg}"}
                     for c, msg in failed]
    record.dropped = [{"client_id": c, "stage": "train", "reason": "no reply"} for c in dropped]
    return record


def test_failure_watch_survives_transient_failures_and_stops_systematic_ones():
    clients = {0: {"modalities": ("hsi", "lidar")}, 1: {"modalities": ("hsi", "lidar")}, 2: {"modalities": ("hsi",)}}
    watch = FailureWatch(2, clients)
    watch.observe(_record([0, 1, 2], failed=[(0, "a")]))
    watch.observe(_record([0, 1, 2], failed=[(0, "b")]))  # a different error: not a repeat
    watch.observe(_record([0, 1, 2]))
    watch.observe(_record([1, 2], failed=[(1, "x")]))
    with pytest.raises(SystematicFailure, match=r"client 1 .* same error in 2 consecutive rounds") as raised:
        watch.observe(_record([0, 1, 2], failed=[(1, "x")]))
    assert "ValueError: x" in str(raised.value)
    # every multimodal client lost, each for its own reason, two rounds running
    watch = FailureWatch(2, clients)
    watch.observe(_record([0, 1, 2], failed=[(0, "a")], dropped=[1]))
    with pytest.raises(SystematicFailure, match=r"every sampled client holding hsi\+lidar \(\[0, 1\]\)"):
        watch.observe(_record([0, 1, 2], failed=[(1, "b")], dropped=[0]))
    FailureWatch(None, clients).observe(_record([0], failed=[(0, "a")]))  # switched off
    silent = _record([0])
    silent.failed = [{"client_id": 0, "stage": "train", "error": ""}]  # a client error without a message
    assert silent.row()["failed"] == [{"client_id": 0, "stage": "train", "reason": "no message"}]


def test_loss_growth_by_hand():
    rows = [{"train_loss": v} for v in (3.0, 2.0, 2.5, 2.6, 2.9)]
    assert loss_growth(rows, 3) == 3 and loss_growth(rows, 4) == 0
    assert loss_growth(rows[:2], 1) == 0 and loss_growth([], 1) == 0
    wobble = [{"train_loss": v} for v in (0.516, 0.517, 0.520, 0.525)]  # +1.7 %: a converged run's noise
    assert loss_growth(wobble, 3) == 0 and loss_growth(wobble, 3, min_rise=0.01) == 3


def test_validation_loss_growth_reads_its_own_key():
    rows = [{"train_loss": v, "val_loss": w} for v, w in ((1.0, 0.9), (0.9, 1.0), (0.8, 1.1), (0.7, 1.3))]
    assert loss_growth(rows, 3) == 0 and loss_growth(rows, 3, key="val_loss") == 3
