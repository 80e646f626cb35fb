"""A federation of real processes on one machine: a SuperLink and N SuperNodes over TLS gRPC.

Used by `ecg-fat federate` and by the integration tests. Every process is started in its own process
group, logs to its own file, and is stopped (with its Flower-spawned children) by `stop_all`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w

APP_DIR = Path(__file__).resolve().parents[1]  # the Flower App: pyproject.toml with [tool.flwr.app]
CONNECTION = "ecg-fat-local"
FLOWER_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1", "PYTHONUNBUFFERED": "1"}


class LauncherError(RuntimeError):
    """A process of the federation failed to start or to answer in time; the message says which."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _bin(name: str) -> str:
    """A console script of this environment (beside the running Python), else from PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else name


@dataclass
class LocalFederation:
    """Paths and ports of one local federation; start the pieces, then `stop_all`."""

    workdir: Path
    certs: Path
    fleet_port: int = field(default_factory=free_port)
    control_port: int = field(default_factory=free_port)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.logs = self.workdir / "logs"
        self.flwr_home = self.workdir / "flwr-home"
        for directory in (self.logs, self.flwr_home, self.workdir / "state"):
            directory.mkdir(parents=True, exist_ok=True)
        # The flwr CLI's connection to this SuperLink (root-certificates must be absolute).
        config = {
            "superlink": {
                CONNECTION: {
                    "address": f"127.0.0.1:{self.control_port}",
                    "root-certificates": str((self.certs / "ca.crt").resolve()),
                }
            }
        }
        (self.flwr_home / "config.toml").write_text(tomli_w.dumps(config))
        self.env = {**os.environ, **FLOWER_ENV, "FLWR_HOME": str(self.flwr_home)}

    # ------------------------------------------------------------------ processes

    def spawn(self, name: str, command: list[str]) -> subprocess.Popen:
        log = (self.logs / f"{name}.log").open("ab")
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True, cwd=self.workdir
        )
        log.close()
        self.processes[name] = process
        return process

    def stop(self, name: str, grace: float = 10.0) -> None:
        process = self.processes.pop(name, None)
        if process is None or process.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(process.pid, sig)  # the process and the Flower apps it spawned
            except ProcessLookupError:
                return
            try:
                process.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        with contextlib.suppress(ProcessLookupError):  # children left in the group (a ClientApp) go too
            os.killpg(process.pid, signal.SIGKILL)

    def kill(self, name: str) -> None:
        """Kill abruptly, as a crash or a pulled cable would."""
        process = self.processes.pop(name)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def stop_all(self) -> None:
        for name in sorted(self.processes, key=lambda n: n == "superlink"):  # SuperNodes first
            self.stop(name)

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.logs / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    # ------------------------------------------------------------------ SuperLink

    def start_superlink(self, timeout: float = 60.0) -> None:
        self.spawn(
            "superlink",
            [
                _bin("flower-superlink"),
                "--ssl-ca-certfile",
                str(self.certs / "ca.crt"),
                "--ssl-certfile",
                str(self.certs / "server.pem"),
                "--ssl-keyfile",
                str(self.certs / "server.key"),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.control_port),
                "--fleet-api-type",
                "grpc-rere",
                "--fleet-api-address",
                f"127.0.0.1:{self.fleet_port}",
                "--enable-supernode-auth",
                "--database",
                str(self.workdir / "state" / "state.db"),
                "--disable-runtime-dependency-installation",
            ],
        )
        context = ssl.create_default_context(cafile=str(self.certs / "ca.crt"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.processes["superlink"].poll() is not None:
                raise LauncherError(f"the SuperLink exited at start:\n{self.log_tail('superlink')}")
            try:
                url = f"https://127.0.0.1:{self.control_port}/health"
                with urllib.request.urlopen(url, context=context, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise LauncherError(f"the SuperLink did not answer on port {self.control_port} within {timeout:.0f} s")

    def flwr(self, *args: str, timeout: float = 120.0) -> dict:
        """Run a `flwr` CLI command against this SuperLink and return its JSON answer."""
        done = subprocess.run(
            [_bin("flwr"), *args, "--format", "json"],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            cwd=self.workdir,
        )
        start = done.stdout.find("{")
        try:
            return json.loads(done.stdout[start:]) if start >= 0 else {"success": False, "error-message": done.stderr}
        except json.JSONDecodeError:
            return {"success": False, "error-message": done.stdout + done.stderr}

    def register(self, public_key: Path) -> None:
        answer = self.flwr("supernode", "register", str(public_key), CONNECTION)
        if not answer.get("success") and "already in use" not in answer.get("error-message", ""):
            raise LauncherError(f"registering {public_key} failed: {answer.get('error-message')}")

    def online_nodes(self) -> int:
        answer = self.flwr("supernode", "list", CONNECTION)
        return sum(node.get("status") == "online" for node in answer.get("nodes", []))

    # ------------------------------------------------------------------ SuperNodes

    def start_supernode(
        self,
        name: str,
        data_path: Path,
        private_key: Path | None,
        threads: int = 0,
        root_certificates: Path | None = None,
        insecure: bool = False,
        max_wait: float = 120.0,
    ) -> subprocess.Popen:
        node_config = f'data-path="{data_path.resolve()}" threads={threads}'
        command = [
            _bin("flower-supernode"),
            "--superlink",
            f"127.0.0.1:{self.fleet_port}",
            "--port",
            str(free_port()),
            "--node-config",
            node_config,
            "--max-retries",
            "10",
            "--max-wait-time",
            str(max_wait),
        ]
        if insecure:  # only the refusal test asks for this; no shipped command does
            command.append("--insecure")
        else:
            command += ["--root-certificates", str(root_certificates or self.certs / "ca.crt")]
        if private_key is not None:
            command += ["--auth-supernode-private-key", str(private_key)]
        return self.spawn(name, command)

    def wait_online(self, count: int, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while (online := self.online_nodes()) < count:
            dead = [n for n, p in self.processes.items() if p.poll() is not None]
            if dead:
                raise LauncherError(f"{', '.join(dead)} exited before connecting:\n{self.log_tail(dead[0])}")
            if time.monotonic() > deadline:
                raise LauncherError(f"only {online} of {count} SuperNodes connected within {timeout:.0f} s")
            time.sleep(1.0)

    # ------------------------------------------------------------------ runs

    def submit(self, run_config: dict, app_dir: Path = APP_DIR) -> int:
        overrides = self.workdir / "run-config.toml"
        overrides.write_text(tomli_w.dumps(run_config))
        answer = self.flwr("run", str(app_dir), CONNECTION, "--run-config", str(overrides))
        if not answer.get("success"):
            raise LauncherError(f"submitting the run failed: {answer.get('error-message')}")
        return int(answer["run-id"])

    def run_status(self, run_id: int) -> str:
        runs = self.flwr("ls", CONNECTION, "--run-id", str(run_id)).get("runs", [])
        return runs[0]["status"] if runs else "unknown"

    def wait_run(self, run_id: int, on_poll: Callable[[], None] | None = None, poll: float = 3.0) -> str:
        """Poll until the run is `finished:...` (`flwr run --stream` exits 0 even on failure)."""
        while not (status := self.run_status(run_id)).startswith("finished"):
            if self.processes.get("superlink") is not None and self.processes["superlink"].poll() is not None:
                raise LauncherError(f"the SuperLink died during run {run_id}:\n{self.log_tail('superlink')}")
            if on_poll:
                on_poll()
            time.sleep(poll)
        if on_poll:
            on_poll()
        return status

    def server_log(self, run_id: int) -> str:
        done = subprocess.run(
            [_bin("flwr"), "log", str(run_id), CONNECTION, "--show"],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=120,
            cwd=self.workdir,
        )
        return done.stdout + done.stderr

    def stop_run(self, run_id: int) -> None:
        self.flwr("stop", str(run_id), CONNECTION)
