"""One round's record and its history row: sample-weighted training metrics, traffic sums, failures
as their last line, the operation's Flower message type."""

from fedrs.federated.aggregation import ClientUpdate
from fedrs.federated.server.record import RoundRecord


def test_the_row_weights_training_metrics_by_samples_and_sums_traffic_by_direction():
    record = RoundRecord(2, 1e-3, {}, [0, 1, 2])
    record.accepted = [ClientUpdate(0, {}, 30, ("hsi",), {"train_loss": 1.0, "ce": 0.5, "update_norm": 9.0}),
                       ClientUpdate(1, {}, 10, ("lidar",), {"train_loss": 3.0, "ce": 1.5})]
    record.failed = [{"client_id": 2, "stage": "train", "error": "Traceback ...\nValueError: no pixels"}]
    record.log_traffic(0, "down", "weights", 100, 40)
    record.log_traffic(0, "up", "weights", 100, 25)
    record.log_traffic(1, "up", "weights", 100, 35)
    row = record.row()
    assert row["train_loss"] == 1.5 and row["train_ce"] == 0.75 and "train_update_norm" not in row
    assert (row["bytes_down"], row["bytes_down_dense"], row["bytes_up"], row["bytes_up_dense"]) == (40, 100, 60, 200)
    assert row["accepted"] == [0, 1] and row["failed"] == [{"client_id": 2, "stage": "train",
                                                            "reason": "ValueError: no pixels"}]
    assert record.participants == [0, 1]


def test_a_round_without_accepted_updates_has_no_training_loss_and_each_operation_its_message_type():
    assert RoundRecord(1, 1e-3, {}, [0]).row()["train_loss"] is None
    assert [RoundRecord(1, 0.0, {}, [], op).message_type for op in ("train", "statistics", "calibration")] == \
        ["train", "query.statistics", "query.calibration"]
