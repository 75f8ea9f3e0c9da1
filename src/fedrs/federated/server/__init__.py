"""The server's round loop, shared by every algorithm and by both Flower engines.

A run (``loop``) starts fresh or from its last checkpoint, then each round is five steps
(``steps``) over one per-round record (``record.RoundRecord``), which tests drive against a fake
grid: ``configure_round`` (sample clients, learning rate, each client's download — ``downlink``),
the protocol's ``before_updates`` (``protocol.RoundProtocol``: nothing, or FedDiff's partner relay,
``fedrs.feddiff.relay``), ``collect_updates`` (train messages, who failed or was dropped),
``aggregate_round`` (the run's ``aggregators.Aggregator``: plain, DP or SecAgg+) and
``validation.evaluate_round`` (on the server's copy of the validation pixels, or the clients' own);
after the last round the passes (``passes``: BatchNorm statistics of the final
model, classifier calibration). ``record_round`` writes the history row and checkpoint;
``watch.FailureWatch`` stops a run whose failures are systematic. Messages: ``messaging``.

Import from the modules themselves: this package imports nothing, so an algorithm's round protocol
can build on ``protocol``, ``messaging`` and ``record`` without a cycle through the loop.
"""
