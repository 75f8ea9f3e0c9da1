"""The plain round protocol: clients sampled uniformly by the run's seeded generator; an update
request carries the client's download. (FedDiff's partner relay: tests/feddiff/test_relay.py.)"""

import numpy as np

from fedrs.federated.server.protocol import RoundProtocol
from fedrs.federated.server.record import Download, RoundRecord


def test_uniform_sampling_is_seeded_and_without_repeats():
    clients = {c: {"site": c} for c in range(10)}
    draws = [RoundProtocol().sample(np.random.default_rng(4), list(range(10)), 4, clients) for _ in range(2)]
    assert draws[0] == draws[1] and len(set(draws[0])) == 4 and draws[0] == sorted(draws[0])
    assert RoundProtocol().sample(np.random.default_rng(4), list(range(10)), 10, clients) == list(range(10))


def test_an_update_request_carries_the_clients_download():
    record = RoundRecord(1, 1e-3, {}, [3])
    record.downloads[3] = Download({"arrays": "weights of client 3"}, 10, 10, {})
    content = RoundProtocol().update_content(record, 3)
    assert content == {"arrays": "weights of client 3"} and content is not record.downloads[3].content
