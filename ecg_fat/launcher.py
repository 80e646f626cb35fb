"""A federation of real processes on one machine: a SuperLink and N SuperNodes over TLS gRPC.

Used by `ecg-fat federate` and by the integration tests. Every process is started in its own process
group, logs to its own file, and is stopped (with its Flower-spawned children) by `stop_all`.
"""

from __future__ import annotations

import contextlib
import hashlib
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

from ecg_fat.superlink import IN_MEMORY_STATE

APP_DIR = Path(__file__).resolve().parents[1]  # the Flower App: pyproject.toml with [tool.flwr.app]
CONNECTION = "ecg-fat-local"
FLOWER_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1", "PYTHONUNBUFFERED": "1"}


def app_bundle_sha256(app_dir: Path = APP_DIR) -> str:
    """The sha256 of the app bundle (FAB) that `flwr run` sends for `app_dir`: what a site approves."""
    from flwr.cli.build import build_fab_from_disk

    return hashlib.sha256(build_fab_from_disk(app_dir)).hexdigest()


def approve(approved: Path, digest: str, label: str) -> bool:
    """Add `digest` to a site's approved-apps file (made if missing); False if it was there already."""
    from ecg_fat.supernode import read_approved

    if approved.is_file() and digest in read_approved(approved):
        return False
    approved.parent.mkdir(parents=True, exist_ok=True)
    with approved.open("a") as file:
        file.write(f"{digest}  # {label}\n")
    return True


class LauncherError(RuntimeError):
    """A process of the federation failed to start or to answer in time; the message says which."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (read from /proc), children before grandchildren."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, queue = [], [pid]
    while queue:
        children = parents.get(queue.pop(0), [])
        found += children
        queue += children
    return found


def _alive(pid: int) -> bool:
    """Still running. A zombie (exited, not yet collected by its parent) is not: Flower's SuperExec leaves its
    finished ClientApps as zombies, and counting them made every stop wait out its whole grace period."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _wait_gone(pids: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)


def _signal_all(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _bin(name: str) -> str:
    """A console script of this environment (beside the running Python), else from PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else name


class ControlClient:
    """The `flwr` CLI against one SuperLink's Control API (HTTPS, verified with the federation's CA)."""

    def __init__(self, address: str, ca: Path, home: Path) -> None:
        self.address, self.ca = address, ca.resolve()
        home.mkdir(parents=True, exist_ok=True)
        # The flwr CLI reads its connections from FLWR_HOME (root-certificates must be absolute).
        config = {"superlink": {CONNECTION: {"address": address, "root-certificates": str(self.ca)}}}
        (home / "config.toml").write_text(tomli_w.dumps(config))
        # Flower's SuperLink and SuperNode start `flower-superexec` from PATH: this environment's first,
        # so that `.venv/bin/ecg-fat` works without activating the environment.
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        self.env = {**os.environ, **FLOWER_ENV, "FLWR_HOME": str(home), "PATH": path}
        self.cwd = home

    def healthy(self) -> bool:
        context = ssl.create_default_context(cafile=str(self.ca))
        try:
            with urllib.request.urlopen(f"https://{self.address}/health", context=context, timeout=2) as answer:
                return answer.status == 200
        except OSError:
            return False

    def flwr(self, *args: str, timeout: float = 120.0) -> dict:
        """Run a `flwr` CLI command against this SuperLink and return its JSON answer. A command that does not
        answer in time (a starved machine) is an unsuccessful answer, not an exception: a status poll then asks
        again at the next poll instead of abandoning a run that is still going."""
        try:
            done = subprocess.run(
                [_bin("flwr"), *args, "--format", "json"], capture_output=True, text=True, env=self.env,
                timeout=timeout, cwd=self.cwd,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return {"success": False, "error-message": f"`flwr {args[0]}` did not answer within {timeout:.0f} s"}
        start = done.stdout.find("{")
        try:
            return json.loads(done.stdout[start:]) if start >= 0 else {"success": False, "error-message": done.stderr}
        except json.JSONDecodeError:
            return {"success": False, "error-message": done.stdout + done.stderr}

    def register(self, public_key: Path) -> None:
        """Register a SuperNode's public key; a key registered already is fine."""
        answer = self.flwr("supernode", "register", str(public_key), CONNECTION)
        if not answer.get("success") and "already in use" not in answer.get("error-message", ""):
            raise LauncherError(f"registering {public_key} failed: {answer.get('error-message')}")

    def online_nodes(self) -> int:
        answer = self.flwr("supernode", "list", CONNECTION)
        return sum(node.get("status") == "online" for node in answer.get("nodes", []))

    def wait_online(self, count: int, timeout: float, check: Callable[[], None] | None = None) -> None:
        """Wait until `count` SuperNodes are online; `check` may raise to give up early."""
        deadline = time.monotonic() + timeout
        while (online := self.online_nodes()) < count:
            if check:
                check()
            if time.monotonic() > deadline:
                raise LauncherError(f"only {online} of {count} SuperNodes connected within {timeout:.0f} s")
            time.sleep(1.0)

    def submit(self, run_config: dict, app_dir: Path = APP_DIR) -> int:
        overrides = self.cwd / "run-config.toml"
        overrides.write_text(tomli_w.dumps(run_config))
        answer = self.flwr("run", str(app_dir), CONNECTION, "--run-config", str(overrides))
        if not answer.get("success"):
            raise LauncherError(f"submitting the run failed: {answer.get('error-message')}")
        return int(answer["run-id"])

    def run_status(self, run_id: int) -> str:
        runs = self.flwr("ls", CONNECTION, "--run-id", str(run_id)).get("runs", [])
        return runs[0]["status"] if runs else "unknown"

    def wait_run(
        self,
        run_id: int,
        on_poll: Callable[[], None] | None = None,
        poll: float = 3.0,
        timeout: float | None = None,
        status_every: float = 20.0,
        ended: Callable[[], bool] | None = None,
    ) -> str:
        """Call `on_poll` every `poll` seconds until the run is `finished:...`.

        Each status query starts a `flwr` CLI process (about 1.5 s of CPU), so the status is asked every
        `status_every` seconds, or at every poll once `ended()` says the run has probably ended.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        next_query = time.monotonic()
        while True:
            if time.monotonic() >= next_query or (ended is not None and ended()):
                status = self.run_status(run_id)
                next_query = time.monotonic() + status_every
                if status.startswith("finished"):
                    break
            if on_poll:
                on_poll()
            if deadline is not None and time.monotonic() > deadline:
                self.stop_run(run_id)
                raise LauncherError(f"run {run_id} did not finish within {timeout:.0f} s (status {status}); stopped")
            time.sleep(poll)
        if on_poll:
            on_poll()
        return status

    def server_log(self, run_id: int, timeout: float = 120.0) -> str:
        try:
            done = subprocess.run(
                [_bin("flwr"), "log", str(run_id), CONNECTION, "--show"], capture_output=True, text=True,
                env=self.env, timeout=timeout, cwd=self.cwd,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return f"(`flwr log {run_id}` did not answer within {timeout:.0f} s)\n"
        return done.stdout + done.stderr

    def stop_run(self, run_id: int) -> None:
        self.flwr("stop", str(run_id), CONNECTION)


@dataclass
class LocalFederation:
    """Processes of one federation on 127.0.0.1: start the pieces, then `stop_all`."""

    workdir: Path
    certs: Path
    fleet_port: int = field(default_factory=free_port)
    control_port: int = field(default_factory=free_port)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Its SuperNodes run only this installation's app, as a site's run only the apps it approved.
        self.approved_apps = self.workdir / "approved-apps.txt"
        approve(self.approved_apps, app_bundle_sha256(), f"this installation's app ({APP_DIR})")
        self.logs = self.workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.control = ControlClient(
            f"127.0.0.1:{self.control_port}", self.certs / "ca.crt", self.workdir / "flwr-home"
        )

    # ------------------------------------------------------------------ processes

    def spawn(self, name: str, command: list[str]) -> subprocess.Popen:
        log = (self.logs / f"{name}.log").open("ab")
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=self.control.env, start_new_session=True,
            cwd=self.workdir,
        )  # fmt: skip
        log.close()
        self.processes[name] = process
        return process

    def stop(self, name: str, grace: float = 10.0) -> None:
        self._stop([name], grace)

    def _stop(self, names: list[str], grace: float) -> None:
        """SIGTERM the processes and everything they spawned, SIGKILL what is left after `grace` seconds.

        Flower's SuperLink and SuperNode start their SuperExec in a session of its own, so the whole
        process tree is collected first: a process group would miss the ServerApp and ClientApps.
        """
        processes = [process for name in names if (process := self.processes.pop(name, None)) is not None]
        everything = [pid for process in processes for pid in [process.pid, *descendants(process.pid)]]
        _signal_all(everything, signal.SIGTERM)
        _wait_gone(everything, grace)
        _signal_all(everything, signal.SIGKILL)
        # SIGKILL is delivered asynchronously: return only once the grandchildren have exited too.
        _wait_gone(everything, 10.0)
        for process in processes:
            process.wait()

    def kill(self, name: str) -> None:
        """Kill abruptly, with everything it spawned, as a crash or a pulled plug would."""
        process = self.processes.pop(name)
        everything = [process.pid, *descendants(process.pid)]
        _signal_all(everything, signal.SIGKILL)
        _wait_gone(everything, 10.0)  # as in _stop: the grandchildren exit a moment after the signal
        process.wait()

    def stop_all(self, grace: float = 10.0) -> None:
        """The SuperNodes, all at once, then the SuperLink."""
        self._stop([name for name in self.processes if name != "superlink"], grace)
        self._stop(["superlink"], grace)

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.logs / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    # ------------------------------------------------------------------ SuperLink and SuperNodes

    def start_superlink(self, timeout: float = 60.0) -> None:
        """Start the SuperLink with its state in memory.

        A SuperLink that restarts on an old database still lists the nodes of its last life as online
        until their heartbeats lapse, and refuses the same keys meanwhile; this launcher starts every
        piece anew (and resumes runs from the results directory's checkpoints), so it needs no old state.
        In memory, not SQLite: with 20 SuperNodes on 2 cores, the SQLite state's 5 s lock timeout ran out
        and replies were lost ("database is locked").
        """
        self.spawn("superlink", [
            _bin("ecg-fat-superlink"), "--certs", str(self.certs),
            "--fleet-address", f"127.0.0.1:{self.fleet_port}", "--host", "127.0.0.1", "--port", str(self.control_port),
            "--database", IN_MEMORY_STATE,
        ])  # fmt: skip
        deadline = time.monotonic() + timeout
        while not self.control.healthy():
            if self.processes["superlink"].poll() is not None:
                raise LauncherError(f"the SuperLink exited at start:\n{self.log_tail('superlink')}")
            if time.monotonic() > deadline:
                raise LauncherError(f"the SuperLink did not answer on port {self.control_port} in {timeout:.0f} s")
            time.sleep(0.5)

    def supernode_command(
        self, data_path: Path, threads: int = 0, max_wait: float = 120.0, node_config: str = ""
    ) -> list[str]:
        """A SuperNode for this SuperLink that runs only the approved app, without its TLS and key settings;
        `node_config` adds to its node config (e.g. `poison="nan"` in tests)."""
        config = f'data-path="{data_path.resolve()}" threads={threads} {node_config}'.strip()
        return [
            _bin("ecg-fat-supernode"), "--approved-apps", str(self.approved_apps),
            "--superlink", f"127.0.0.1:{self.fleet_port}", "--port", str(free_port()),
            "--node-config", config, "--max-retries", "10", "--max-wait-time", str(max_wait),
        ]  # fmt: skip

    def start_supernode(
        self,
        name: str,
        data_path: Path,
        private_key: Path | None,
        threads: int = 0,
        root_certificates: Path | None = None,
        max_wait: float = 120.0,
        node_config: str = "",
    ) -> subprocess.Popen:
        command = self.supernode_command(data_path, threads, max_wait, node_config)
        command += ["--root-certificates", str(root_certificates or self.certs / "ca.crt")]
        if private_key is not None:
            command += ["--auth-supernode-private-key", str(private_key)]
        return self.spawn(name, command)

    def check_alive(self) -> None:
        """Raise if a started process has exited (used while waiting on the federation)."""
        dead = [name for name, process in self.processes.items() if process.poll() is not None]
        if dead:
            raise LauncherError(f"{', '.join(dead)} exited:\n{self.log_tail(dead[0])}")

    def wait_online(self, count: int, timeout: float = 120.0) -> None:
        self.control.wait_online(count, timeout, check=self.check_alive)
