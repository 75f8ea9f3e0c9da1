"""A Flower federation on 127.0.0.1 for tests: one SuperLink (TLS with a throw-away CA and
SuperNode authentication, or plain for the insecure case), SuperNodes started on demand. Every
process runs in its own session and is stopped by its process group."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fedrs.federated.credentials import issue_ca, issue_server_certificate, node_keypair

BIN = Path(sys.executable).parent


def free_port(taken: set[int] | None = None) -> int:
    """A port nothing listens on now and not in ``taken``: the kernel may hand a just-released port
    out again before the process it was meant for has bound it (two SuperNodes then collide)."""
    taken = set() if taken is None else taken
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in taken:
            taken.add(port)
            return port


def wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


class Loopback:
    def __init__(self, root: Path, secure: bool = True):
        self.root, self.secure = root, secure
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []
        home = root / "flwr_home"
        home.mkdir(parents=True, exist_ok=True)
        # the SuperExec looks for a new message every 1 s by default; a ClientApp starts sooner at 0.1 s
        self.env = {**os.environ, "FLWR_HOME": str(home), "FLWR_DISABLE_UPDATE_CHECK": "1",
                    "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1",
                    "FLWR_TELEMETRY_ENABLED": "0", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        self.ports: set[int] = set()
        self.port = free_port(self.ports)
        if secure:
            self.ca, _ = issue_ca(root / "ca")
            self.server_cert, self.server_key = issue_server_certificate(root / "ca", ["127.0.0.1", "localhost"],
                                                                         root / "superlink")
        lines = ["[superlink.loopback]", f'address = "127.0.0.1:{self.port}"',
                 f'root-certificates = "{self.ca}"' if secure else "insecure = true"]
        (home / "config.toml").write_text("\n".join(lines) + "\n")

    @property
    def deployment(self) -> dict[str, Any]:
        """The project's ``federation.deployment`` block for this SuperLink."""
        tls = {"root_certificates": str(self.ca)} if self.secure else {"insecure": True}
        return {"superlink": f"127.0.0.1:{self.port}", "poll_seconds": 0.5, "timeout": 600, **tls}

    def _start(self, args: list[str], log: str) -> subprocess.Popen:
        path = self.root / log
        self.logs.append(path)
        proc = subprocess.Popen([str(BIN / args[0]), *args[1:]], env=self.env, cwd=self.root,
                                stdout=open(path, "w"), stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def start_superlink(self) -> None:
        tls = (["--ssl-ca-certfile", str(self.ca), "--ssl-certfile", str(self.server_cert), "--ssl-keyfile",
                str(self.server_key), "--enable-supernode-auth"] if self.secure else ["--insecure"])
        self._start(["flower-superlink", *tls, "--host", "127.0.0.1", "--port", str(self.port),
                     "--disable-runtime-dependency-installation"], "superlink.log")
        wait_port(self.port)

    def node_key(self, name: str, register: bool = True) -> Path:
        key, public = node_keypair(self.root / "keys" / name)
        if register:
            done = subprocess.run([str(BIN / "flwr"), "supernode", "register", str(public), "loopback", "--format",
                                   "json"], env=self.env, cwd=self.root, capture_output=True, text=True, timeout=120)
            text = done.stdout
            assert "{" in text and json.loads(text[text.index("{"):]).get("success"), text + done.stderr
        return key

    def registered_nodes(self) -> list[dict[str, Any]]:
        done = subprocess.run([str(BIN / "flwr"), "supernode", "ls", "loopback", "--format", "json"], env=self.env,
                              cwd=self.root, capture_output=True, text=True, timeout=120)
        text = done.stdout
        assert "{" in text, text + done.stderr
        nodes: list[dict[str, Any]] = json.loads(text[text.index("{"):]).get("nodes", [])
        return nodes

    def start_supernode(self, name: str, node_config: dict[str, str], key: Path | None = None,
                        ca: bool = True, retries: int | None = None) -> subprocess.Popen:
        config = " ".join(f'{k}="{v}"' for k, v in node_config.items())
        if self.secure:
            tls = (["--root-certificates", str(self.ca)] if ca else []) + (
                ["--auth-supernode-private-key", str(key)] if key else [])
        else:
            tls = ["--insecure"]
        extra = ["--max-retries", str(retries)] if retries is not None else []
        return self._start(["flower-supernode", *tls, "--superlink", f"127.0.0.1:{self.port}", "--host", "127.0.0.1",
                            "--port", str(free_port(self.ports)), "--node-config", config, *extra],
                           f"supernode-{name}.log")

    def tail(self, chars: int = 1500) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-chars:]}" for p in self.logs if p.exists())

    def stop(self) -> None:
        for proc in self.procs:  # each in its own session: stop the whole group (SuperExec children included)
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
