"""Containers: the compose files, and a real `docker compose up` on the CPU override.

The static checks always run. The real run needs a Docker engine: CI starts one with
../shared/tools/docker-engine.sh and sets ECG_FAT_DOCKER=1, which turns a missing engine into a
failure; elsewhere the test skips and says why.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from common.config import CONDITIONS
from tests.helpers import docker_engine
from tests.readme_blocks import script

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = Path(os.environ.get("ECG_FAT_COMPOSE_SCHEMA", ROOT.parent / "shared" / "schemas" / "compose-spec.json"))
COMPOSE_FILES = [
    ROOT / "compose.yaml",
    ROOT / "docker" / "compose.cpu.yaml",
    ROOT / "docker" / "server" / "compose.yaml",
    ROOT / "docker" / "site" / "compose.yaml",
    ROOT / "docker" / "site" / "compose.cpu.yaml",
]
SHIPPED = [
    *COMPOSE_FILES,
    ROOT / "docker" / "Dockerfile",
    *ROOT.glob("common/*.py"),
    *ROOT.glob("server/*.py"),
    *ROOT.glob("client/*.py"),
    *ROOT.glob("certs/*.py"),
    *ROOT.glob("ecg_fat/*.py"),
    ROOT / "docker" / "offline-setup.sh",
    ROOT / ".ci" / "run",
]


class ComposeLoader(yaml.SafeLoader):
    """YAML with Compose's merge tags (`!reset`, `!override`) read as plain values."""


ComposeLoader.add_constructor("!reset", lambda loader, node: None)


def _override(loader: yaml.SafeLoader, node: yaml.Node) -> object:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node) or None


ComposeLoader.add_constructor("!override", _override)


def load(path: Path) -> dict:
    return yaml.load(path.read_text(), Loader=ComposeLoader)


# ----------------------------------------------------------------------------- static


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_compose_file_follows_the_compose_spec(path: Path) -> None:
    if not SCHEMA.is_file():
        pytest.skip(f"the Compose JSON schema is not at {SCHEMA} (set ECG_FAT_COMPOSE_SCHEMA)")
    jsonschema.Draft7Validator(json.loads(SCHEMA.read_text())).validate(load(path))


def test_nothing_shipped_uses_an_insecure_flag() -> None:
    offenders = [str(p.relative_to(ROOT)) for p in SHIPPED if "--insecure" in p.read_text()]
    assert offenders == []


def test_each_supernode_mounts_only_its_own_shard_and_key() -> None:
    services = load(ROOT / "compose.yaml")["services"]
    nodes = sorted((name for name in services if name.startswith("supernode-")), key=lambda n: int(n.split("-")[1]))
    assert len(nodes) == 10
    for index, name in enumerate(nodes):
        mounts = sorted(services[name]["volumes"])
        assert mounts == sorted(
            [
                "./certs/out/ca.crt:/certs/ca.crt:ro",
                f"./certs/out/node-{index:02d}:/keys:ro",  # its private key only (make_certs: node-NN/node)
                f"./data/nodes/node-{index:02d}:/data:ro",  # its shard only (prepare --node-dirs)
                "./data/approved-apps.txt:/approved-apps.txt:ro",  # the apps it may run
            ]
        ), name
        assert services[name]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
        assert "exec sleep infinity" in services[name]["command"][2]  # no shard (NODES below its number): idle
    cpu = load(ROOT / "docker" / "compose.cpu.yaml")["services"]
    assert set(cpu) == set(nodes) and all(cpu[name]["deploy"] is None for name in nodes)  # `!reset`: no GPU
    prepare = " ".join(services["prepare"]["command"])
    assert "--node-dirs /data/nodes" in prepare and "${NODES:+--clients $NODES}" in prepare


def test_only_the_runner_shares_the_superlinks_network_namespace() -> None:
    """The Control API (no credential in Flower 1.39) listens on 127.0.0.1 inside the SuperLink's container;
    the runner joins that namespace; only the Fleet port (TLS gRPC, node keys) is published."""
    from ecg_fat.superlink import build_parser

    assert build_parser().parse_args([]).host == "127.0.0.1"
    one_host, server = (
        load(ROOT / "compose.yaml")["services"],
        load(ROOT / "docker" / "server" / "compose.yaml")["services"],
    )
    for services in (one_host, server):
        assert services["superlink"]["command"] == ["ecg-fat-superlink"]  # its --host default: loopback
        assert [p.rsplit(":", 1)[1] for p in services["superlink"]["ports"]] == ["9092"]
    assert [name for name, s in one_host.items() if "network_mode" in s] == ["runner"]
    assert one_host["runner"]["network_mode"] == "service:superlink"
    assert "--superlink 127.0.0.1:8000" in one_host["runner"]["command"][2]
    assert server["runner"]["extends"]["service"] == "runner" and "network_mode" not in server["runner"]  # inherited


def test_superlink_is_tls_with_node_auth_and_sees_only_the_test_set() -> None:
    for path in (ROOT / "compose.yaml", ROOT / "docker" / "server" / "compose.yaml"):
        superlink = load(path)["services"]["superlink"]
        assert superlink["command"] == ["ecg-fat-superlink"]  # its flags: tests/test_entry_points.py
        data = [m for m in superlink["volumes"] if ":/data" in m]
        assert data == ["./data/prepared/test.npz:/data/test.npz:ro"]


def test_keys_are_never_baked_into_an_image() -> None:
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignored[0:2] == ["# Only what the images need; never keys, data, results or local environments.", "*"]
    copies = [line for line in (ROOT / "docker" / "Dockerfile").read_text().splitlines() if line.startswith("COPY")]
    assert copies and not any(re.search(r"certs/out|\.key|node-|/data|results", line) for line in copies)
    assert "!certs/make_certs.py" in ignored and not any(line.startswith("!certs/out") for line in ignored)


# ----------------------------------------------------------------------------- a real run


def _compose(*args: str, env: dict, cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["docker", "compose", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def images() -> dict:
    """Both images, built from this checkout; where the engine cannot pull the official base image (this
    project's machines), after the README's one step for such a host."""
    client = docker_engine()
    if not client.images.list(name="python:3.11-slim-bookworm"):
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script("offline")], cwd=ROOT, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    env = {
        k: v for k, v in os.environ.items() if k not in ("BASE_IMAGE", "SERVER_TORCH_PIP_ARGS", "CLIENT_TORCH_PIP_ARGS")
    }
    files = ["-f", str(ROOT / "compose.yaml"), "-f", str(ROOT / "docker" / "compose.cpu.yaml")]
    built = _compose(*files, "build", "certs", "supernode-1", env=env, cwd=ROOT, timeout=1200)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    return {"client": client, "env": env, "files": files}


@pytest.mark.slow
def test_server_and_sites_on_separate_networks(images: dict, tmp_path: Path) -> None:
    """The server compose and three site composes, each on its own Docker network, joined only through the
    SuperLink's published port over TLS; one site is killed mid-round and the run still completes."""
    import socket

    mitdb = Path(os.environ.get("ECG_FAT_MITDB", ""))
    if not (mitdb / "100.hea").is_file():
        pytest.skip("the real MIT-BIH records are needed (set ECG_FAT_MITDB)")
    with socket.socket() as probe:
        probe.bind(("", 0))
        port = probe.getsockname()[1]
    # The server's outputs go to a project directory of the test's own; laid out as in a checkout
    # (docker/server/ under a root that has compose.yaml), because its runner extends ../../compose.yaml's.
    server_dir, server_file = tmp_path / "root" / "docker" / "server", ROOT / "docker" / "server" / "compose.yaml"
    server_dir.mkdir(parents=True)
    (tmp_path / "root" / "compose.yaml").symlink_to(ROOT / "compose.yaml")
    server = ["--project-directory", str(server_dir), "--project-name", "ecg-fat-test-server", "-f", str(server_file)]
    env = images["env"] | {
        "SUPERLINK_SANS": "host.docker.internal",
        "FLEET_PORT": str(port),
        "MITDB_DIR": str(mitdb.resolve()),
    }
    sites = {name: tmp_path / name for name in ("site-a", "site-b", "site-c")}
    site_file = [
        "-f",
        str(ROOT / "docker" / "site" / "compose.yaml"),
        "-f",
        str(ROOT / "docker" / "site" / "compose.cpu.yaml"),
    ]

    def site(name: str) -> list[str]:
        return ["--project-directory", str(sites[name]), "--project-name", f"ecg-fat-test-{name}", *site_file]

    try:
        up = _compose(*server, "up", "-d", "--no-build", "--wait", "superlink", env=env, cwd=tmp_path, timeout=600)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        (server_dir / "keys").mkdir()
        for index, (name, directory) in enumerate(sites.items()):
            wfdb_dir = directory / "wfdb"
            wfdb_dir.mkdir(parents=True)
            for record in (f"{100 + 2 * index}", f"{101 + 2 * index}"):  # each hospital its own patients
                for suffix in (".hea", ".dat", ".atr"):
                    shutil.copy2(mitdb / f"{record}{suffix}", wfdb_dir)
            for step in ("key", "approve"):
                done = _compose(*site(name), "run", "--rm", step, env=env, cwd=tmp_path, timeout=120)
                assert done.returncode == 0, done.stdout + done.stderr
            shutil.copy2(directory / "keys" / "node.pub", server_dir / "keys" / f"{name}.pub")
            shutil.copy2(server_dir / "certs" / "ca.crt", directory / "ca.crt")
            site_env = env | {"SUPERLINK_ADDRESS": f"host.docker.internal:{port}", "WFDB_DIR": str(wfdb_dir)}
            started = _compose(
                *site(name), "up", "-d", "--no-build", "supernode", env=site_env, cwd=tmp_path, timeout=120
            )
            assert started.returncode == 0, started.stdout + started.stderr
        run_env = env | {
            "NODES": "3",
            "NODES_PER_ROUND": "2",
            "ROUNDS": "3",
            "LOCAL_EPOCHS": "1",
            "MAX_TRAIN_WINDOWS": "300",
            "MAX_TEST_WINDOWS": "300",
            "ROUND_TIMEOUT": "180",
            "RUN_NAME": "sites",
        }
        runner = subprocess.Popen(
            ["docker", "compose", *server, "run", "--rm", "runner"],
            env=run_env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        killed = _kill_a_training_site(images["client"], deadline_s=420)
        # Nothing but the runner (in the SuperLink's network namespace) reaches the Control API: not a site
        # through the host, not a container beside the SuperLink on the server's network. The Fleet port is open.
        client = images["client"]
        a_site = next(
            c for c in client.containers.list() if c.name.startswith("ecg-fat-test-site-") and c.name != killed
        )
        beside = client.containers.get("ecg-fat-test-server-certs-1")
        for container, host in ((a_site, "host.docker.internal"), (beside, "superlink")):
            assert "refused" in _connect(container, host, 8000), (container.name, host)
        assert _connect(a_site, "host.docker.internal", port) == "open"
        output, _ = runner.communicate(timeout=900)
        assert runner.returncode == 0, output[-6000:]
        results = server_dir / "results" / "sites"
        rows = [json.loads(line) for line in (results / "metrics.jsonl").read_text().splitlines()]
        assert [(r["round"], r["condition"]) for r in rows] == [(r, c) for r in range(4) for c in CONDITIONS]
        clients = [json.loads(line) for line in (results / "clients.jsonl").read_text().splitlines()]
        assert any(row["status"] == "failed" for row in clients), f"{killed} was killed, yet no round lost a node"
    finally:
        for name in sites:
            _compose(*site(name), "down", "--volumes", env=env, cwd=tmp_path, timeout=300)
        _compose(*server, "down", "--volumes", env=env, cwd=tmp_path, timeout=300)


def _connect(container, host: str, port: int) -> str:
    """'open', or why a TCP connection from inside `container` failed."""
    probe = (
        "import socket, sys\ntry:\n    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)\n"
        "    print('open')\nexcept OSError as e:\n    print('refused' if isinstance(e, ConnectionRefusedError) else e)"
    )
    return container.exec_run(["python", "-c", probe, host, str(port)]).output.decode().strip()


def _kill_a_training_site(client, deadline_s: float) -> str:
    """Kill the first site container seen training (mid-round), as a crash would; the run goes on with the
    other sites. Training, not answering the server's partition-id query (also a ClientApp run): its SuperNode's
    log has received a train message and has not sent the reply yet."""
    import time

    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        for container in client.containers.list(filters={"label": "com.docker.compose.service=supernode"}):
            if not container.name.startswith("ecg-fat-test-site-"):
                continue
            try:  # a container that is just starting or stopping may have gone
                log = container.logs().decode(errors="replace")
            except Exception:
                continue
            if log.rfind("Receiving: train message") > log.rfind("Sent successfully"):
                container.kill()
                return container.name
        time.sleep(0.3)
    raise AssertionError("no site container was seen training")
