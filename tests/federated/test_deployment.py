"""Flower's deployment engine on 127.0.0.1: one SuperLink, two SuperNodes (one per organisation,
each reading its own partition file), the project's apps, two rounds. Every process started here is
stopped by its process group."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


@pytest.fixture
def flower_env(tmp_path):
    home = tmp_path / "flwr_home"
    home.mkdir()
    env = {**os.environ, "FLWR_HOME": str(home), "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_TELEMETRY_ENABLED": "0",
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    procs: list[subprocess.Popen] = []

    def start(*args: str, log: str) -> subprocess.Popen:
        proc = subprocess.Popen([str(BIN / args[0]), *args[1:]], env=env, cwd=tmp_path,
                                stdout=open(tmp_path / log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(proc)
        return proc

    yield env, start, tmp_path
    for proc in procs:  # each in its own session: stop the whole group (SuperExec children included)
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


def test_two_organisations_train_on_the_deployment_engine(tiny_federation, flower_env):
    env, start, tmp = flower_env
    link = free_port()
    start("flower-superlink", "--insecure", "--host", "127.0.0.1", "--port", str(link),
          "--disable-runtime-dependency-installation", log="superlink.log")
    wait_port(link)
    # two organisations: each SuperNode is told where its own partition file lives
    for cid in (0, 1):
        start(
            "flower-supernode",
            "--insecure",
            "--superlink",
            f"127.0.0.1:{link}",
            "--host",
            "127.0.0.1",
            "--port",
            str(free_port()),
            "--node-config",
            f'partition-path="{tiny_federation["dir"]}/client_{cid:03d}.npz"',
            log=f"supernode{cid}.log",
        )
    (Path(env["FLWR_HOME"]) / "config.toml").write_text(
        f'[superlink.local-test]\naddress = "127.0.0.1:{link}"\ninsecure = true\n'
    )

    out = tmp / "run"
    settings = {
        "federated": {
            "algorithm": "fedavg",
            "model": tiny_federation["spec"],
            "train": {"epochs": 1, "batch_size": 8},
            "num_rounds": 2,
            "min_clients": 2,
            "seed": 3,
        },
        "test_patches": str(tmp / "test.npz"),
        "expected_nodes": 2,
        "output_dir": str(out),
    }
    from fedrs.datasets import NpzDataset

    NpzDataset(settings["test_patches"]).save(tiny_federation["test"])
    (tmp / "settings.json").write_text(json.dumps(settings))
    submitted = subprocess.run(
        [
            str(BIN / "flwr"),
            "run",
            str(REPO / "flower_app"),
            "local-test",
            "--format",
            "json",
            "--run-config",
            f'settings-file="{tmp / "settings.json"}"',
        ],
        env=env,
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    run_id = json.loads(submitted.stdout[submitted.stdout.index("{") :])["run-id"]

    deadline, status = time.monotonic() + 240, ""
    while time.monotonic() < deadline:
        listing = subprocess.run(
            [str(BIN / "flwr"), "ls", "local-test", "--run-id", str(run_id), "--format", "json"],
            env=env,
            cwd=tmp,
            capture_output=True,
            text=True,
            timeout=60,
        )
        text = listing.stdout
        if "{" in text:
            runs = json.loads(text[text.index("{") :]).get("runs", [])
            status = runs[0].get("status", "") if runs else ""
            if status.startswith("finished"):
                break
        time.sleep(2)
    logs = "\n".join((tmp / f).read_text()[-2000:] for f in ("superlink.log", "supernode0.log", "supernode1.log"))
    assert status == "finished:completed", f"run status {status!r}\n{logs}"
    # `flwr run` says "completed" even for some crashes: the ServerApp's own status file decides
    assert json.loads((out / "status.json").read_text())["status"] == "completed"
    history = json.loads((out / "history.json").read_text())
    assert [r["round"] for r in history["rounds"]] == [1, 2]
    assert all(r["sampled"] == [0, 1] and r["accepted"] == [0, 1] for r in history["rounds"])
    assert sorted(history["clients"]) == ["0", "1"]
    assert (out / "model.pt").is_file()
