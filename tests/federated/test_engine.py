"""Choosing the engine: the federation block is checked before anything is submitted."""

from __future__ import annotations

import pytest

from fedrs.federated.engine import DeploymentConfig, FederationConfig, flower_home, run_job


def test_an_unknown_engine_or_key_is_refused_by_name():
    with pytest.raises(ValueError, match="federation.engine is 'ray'"):
        FederationConfig.from_dict({"engine": "ray"})
    with pytest.raises(ValueError, match="unknown keys \\['superlnk'\\]"):
        FederationConfig.from_dict({"engine": "deployment", "deployment": {"superlnk": "x:1"}}).deployment_config()


def test_a_deployment_needs_tls_or_an_explicit_insecure(tmp_path):
    with pytest.raises(ValueError, match="set root_certificates"):
        DeploymentConfig(superlink="127.0.0.1:9093")
    with pytest.raises(FileNotFoundError, match="ca.crt is not a file"):
        DeploymentConfig(root_certificates=str(tmp_path / "ca.crt"))
    with pytest.raises(ValueError, match="exclude each other"):
        DeploymentConfig(root_certificates=str(tmp_path / "ca.crt"), insecure=True)


def test_the_private_flower_home_names_only_the_configured_superlink(tmp_path):
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    env = flower_home(DeploymentConfig(superlink="lab:9093", root_certificates=str(tmp_path / "ca.crt")),
                      tmp_path / "home")
    text = (tmp_path / "home" / "config.toml").read_text()
    assert 'address = "lab:9093"' in text and f'root-certificates = "{tmp_path / "ca.crt"}"' in text
    assert "insecure" not in text and env["FLWR_HOME"] == str(tmp_path / "home")
    assert env["FLWR_TELEMETRY_ENABLED"] == "0"
    flower_home(DeploymentConfig(insecure=True), tmp_path / "plain")
    assert "insecure = true" in (tmp_path / "plain" / "config.toml").read_text()


def test_deployment_without_a_run_folder_is_refused():
    with pytest.raises(ValueError, match="run folder"):
        run_job(None, 2, {"engine": "deployment", "deployment": {"insecure": True}})  # type: ignore[arg-type]
