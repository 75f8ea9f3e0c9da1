"""The server's round loop, shared by every algorithm and by both Flower engines.

A run (``loop``) starts fresh or from its last checkpoint, then each round is five steps
(``steps``) over one per-round record (``record.RoundRecord``), which tests drive against a fake
grid: ``configure_round`` (sample clients, learning rate, each client's download — ``downlink``),
``exchange_features`` (FedDiff's partner relay) and ``collect_updates`` (train messages, who failed
or was dropped), ``aggregate_round`` (the run's ``aggregators.Aggregator``: plain, DP or SecAgg+),
``evaluate_round``; after the last round the passes (``passes``: BatchNorm statistics of the final
model, classifier calibration). ``record_round`` writes the history row and checkpoint;
``watch.FailureWatch`` stops a run whose failures are systematic. Messages: ``messaging``.
"""

from fedrs.federated.server.aggregators import (
    PlainAggregator,
    PrivateAggregator,
    SecureAggregator,
    make_aggregator,
    private_release,
)
from fedrs.federated.server.config import FederatedConfig
from fedrs.federated.server.downlink import Downlink
from fedrs.federated.server.loop import RunInterrupted, record_round, run_round, run_rounds, start_run
from fedrs.federated.server.messaging import (
    client_error,
    discover_clients,
    error_signature,
    make_message,
    payload_counts,
    wait_for_nodes,
)
from fedrs.federated.server.passes import calibration_round, merge_pass, statistics_pass_round, statistics_round
from fedrs.federated.server.record import Download, RoundRecord
from fedrs.federated.server.state import RunState, eval_subset, sample_clients
from fedrs.federated.server.steps import (
    accumulate_tail,
    aggregate_round,
    average_tail,
    collect_updates,
    configure_round,
    encode_downloads,
    evaluate_round,
    exchange_features,
)
from fedrs.federated.server.watch import FailureWatch, SystematicFailure, loss_growth

__all__ = [
    "Download", "Downlink", "FailureWatch", "FederatedConfig", "PlainAggregator", "PrivateAggregator", "RoundRecord",
    "RunInterrupted", "RunState", "SecureAggregator", "SystematicFailure", "accumulate_tail", "aggregate_round",
    "average_tail", "calibration_round", "client_error", "collect_updates", "configure_round", "discover_clients",
    "encode_downloads", "error_signature", "eval_subset", "evaluate_round", "exchange_features", "loss_growth",
    "make_aggregator", "make_message", "merge_pass", "payload_counts", "private_release", "record_round",
    "run_round", "run_rounds", "sample_clients", "start_run", "statistics_pass_round", "statistics_round",
    "wait_for_nodes",
]
