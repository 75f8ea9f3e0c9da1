import mlflow
import pytest
from mlflow import MlflowClient

from fedrs.registry import load_registered_artifact, promote_champion


@pytest.fixture
def client(tmp_path):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    yield MlflowClient()
    mlflow.set_tracking_uri(None)


def _version(client, name, oa, experiment, test_oa=None):
    run = client.create_run(experiment)
    if oa is not None:
        client.log_metric(run.info.run_id, f"{name}.val_oa", oa)
    # the test OA a run also logs: the higher the validation OA, the lower it is here, so a champion
    # chosen on the test pixels would be another version
    client.log_metric(run.info.run_id, f"{name}.oa", 2.0 - (oa or 0.0) if test_oa is None else test_oa)
    client.set_terminated(run.info.run_id)
    if not client.search_registered_models(f"name='{name}'"):
        client.create_registered_model(name)
    return client.create_model_version(name, f"runs:/{run.info.run_id}/{name}", run.info.run_id)


def test_champion_is_the_best_validation_oa_never_the_best_test_oa_and_moves_when_beaten(client):
    experiment = client.create_experiment("t")
    assert promote_champion(client, "feddiff") is None  # nothing registered yet
    _version(client, "feddiff", 0.90, experiment)
    second = _version(client, "feddiff", 0.95, experiment)
    _version(client, "feddiff", 0.93, experiment)
    _version(client, "feddiff", None, experiment)  # a run without the metric never wins
    assert promote_champion(client, "feddiff").version == second.version
    assert client.get_model_version_by_alias("feddiff", "champion").version == second.version
    tie = _version(client, "feddiff", 0.95, experiment)
    assert promote_champion(client, "feddiff").version == tie.version  # ties: the newest
    other = _version(client, "fedavg", 0.5, experiment)
    assert promote_champion(client, "fedavg").version == other.version
    assert client.get_model_version_by_alias("feddiff", "champion").version == tie.version


def test_load_rejects_an_uri_without_alias_or_version(client):
    with pytest.raises(ValueError, match="models:/<name>@<alias>"):
        load_registered_artifact("models:/feddiff", client)
