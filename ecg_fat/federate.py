"""`ecg-fat federate`: the whole federation on one machine, without Docker.

Prepares the data if needed, makes certificates and node keys if missing, starts a SuperLink (TLS,
node authentication, state in memory) and N SuperNodes (each given only its own shard), waits until
all are connected, submits the run, prints progress per round, waits for the run's final status, and
stops every process it started, also on Ctrl-C or failure. Exit code 0 only for a completed run.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from certs.make_certs import make_all, node_key_path
from common.config import AttackerConfig, FederationConfig, PrepareConfig
from common.data import MANIFEST, TEST_FILE, DataError, Manifest, prepare, up_to_date
from common.metrics import format_table, progress_line
from ecg_fat.launcher import ControlClient, LauncherError, LocalFederation
from ecg_fat.report import write_report
from server.results import FINAL_MODEL, Results

log = logging.getLogger("ecg_fat")
ATTACK_FILE = "attack.json"  # in a results directory: which partitions attacked, and how


@dataclass(frozen=True)
class FederateOptions:
    workdir: Path
    source: Path | None  # WFDB records to prepare from; None: `data` must already be prepared
    data: Path
    threads_per_node: int
    connect_timeout: float = 180.0
    malicious: int = 0  # the nodes with partition ids 0..malicious-1 attack as `attacker` says
    attacker: AttackerConfig = field(default_factory=AttackerConfig)

    def node_config(self, index: int) -> str:
        attack = self.attacker.to_node_config() if index < self.malicious else ""
        return f"partition-id={index} {attack}".strip()


def ensure_prepared(options: FederateOptions, cfg: PrepareConfig) -> Manifest:
    """Reuse `options.data` when it holds data prepared with these settings, intact; else prepare it."""
    manifest = up_to_date(options.data, options.source, cfg)
    if manifest is not None:
        log.info("using the prepared data in %s", options.data)
        return manifest
    if options.source is None:
        if (options.data / MANIFEST).exists():
            raise DataError(f"{options.data} was prepared with other settings; pass --mitdb to prepare again")
        raise DataError(f"{options.data / MANIFEST} is missing: pass --mitdb DIR (or --download) to prepare the data")
    log.info("preparing %d client shards from %s into %s", cfg.clients, options.source, options.data)
    return prepare(options.source, options.data, cfg)


class Progress:
    """Prints the rows that the ServerApp adds to the results directory, as they appear."""

    def __init__(self, results: Path) -> None:
        self.results = Results(results)
        self.shown = {"metrics": 0, "clients": 0}

    def _new_rows(self, name: str) -> list[dict]:
        rows = self.results.read_jsonl(name)
        if len(rows) < self.shown[name]:  # a resumed run rewrote the file
            self.shown[name] = 0
        new, self.shown[name] = rows[self.shown[name] :], len(rows)
        return new

    def __call__(self) -> None:
        for row in self._new_rows("clients"):
            counted = row.get("counted-examples", row.get("num-examples"))
            what = (
                f"{row['num-examples']} windows"
                + (f" (counted as {counted})" if counted != row["num-examples"] else "")
                + f", loss {row['train-loss']:.4f}"
                if row["status"] == "ok"
                else f"FAILED: {row.get('error', '')[:200]}"
            )
            log.info("round %d  node %s  %s", row["round"], row["node_id"], what)
        for row in self._new_rows("metrics"):
            log.info("%s", progress_line(row["round"], row["condition"], row))


def follow(control: ControlClient, run_id: int, run_cfg: FederationConfig, check: Callable[[], None]) -> int:
    """Print the run's progress until it ends; keep the ServerApp's log; 0 only for a completed run."""
    results = Path(run_cfg.results_dir)
    progress = Progress(results)

    def poll() -> None:
        progress()
        check()

    # The ServerApp writes the final model last: from then on, ask for the run's status at every poll.
    status = control.wait_run(run_id, on_poll=poll, ended=lambda: (results / FINAL_MODEL).exists())
    server_log = control.server_log(run_id)
    if results.is_dir():
        (results / "serverapp.log").write_text(server_log)
    if status != "finished:completed":
        log.error(
            "run %d ended %s; the ServerApp's log ends:\n%s", run_id, status, "\n".join(server_log.splitlines()[-25:])
        )
        return 1
    summary = summarize(results)
    (results / "summary.txt").write_text(summary + "\n")
    report = write_report([results], results / "report")
    log.info("run %d completed; results in %s, report in %s\n%s", run_id, results, report, summary)
    return 0


def summarize(results: Path) -> str:
    """The last round's metrics as a table."""
    rows = Results(results).read_jsonl("metrics")
    last = max(row["round"] for row in rows)
    return f"round {last}\n" + format_table({row["condition"]: row for row in rows if row["round"] == last})


def submit(
    control: ControlClient,
    run_cfg: FederationConfig,
    keys: list[Path],
    connect_timeout: float,
    ready_file: Path | None = None,
) -> int:
    """Against a running SuperLink: register keys, wait for the nodes, submit, follow."""
    for key in keys:
        control.register(key)
    if ready_file:
        ready_file.touch()
    log.info("registered %d SuperNode keys; waiting for %d SuperNodes", len(keys), run_cfg.num_nodes)
    control.wait_online(run_cfg.num_nodes, connect_timeout)
    run_id = control.submit(run_cfg.to_run_config())
    log.info("run %d submitted: %s", run_id, describe(run_cfg))
    try:
        return follow(control, run_id, run_cfg, check=lambda: None)
    except KeyboardInterrupt:
        control.stop_run(run_id)
        raise


def describe(cfg: FederationConfig) -> str:
    return (
        f"{cfg.num_rounds} rounds, {cfg.nodes_per_round} of {cfg.num_nodes} nodes per round, "
        f"{'adversarial' if cfg.train.adversarial else 'clean'} training; results in {cfg.results_dir}"
    )


def federate(
    options: FederateOptions,
    prepare_cfg: PrepareConfig,
    run_cfg: FederationConfig,
    watch: Callable[[LocalFederation], None] | None = None,
) -> int:
    """Run the federation; `watch` is called with it at every progress poll (the benchmark samples memory)."""
    manifest = ensure_prepared(options, prepare_cfg)
    shards = [options.data / name for name in manifest.client_files]
    certs = options.workdir / "certs"
    make_all(certs, len(shards))
    federation = LocalFederation(options.workdir.resolve(), certs.resolve())
    run_id = None
    try:
        log.info("starting the SuperLink (TLS, node authentication) on 127.0.0.1:%d", federation.fleet_port)
        federation.start_superlink()
        for index in range(len(shards)):
            federation.control.register(node_key_path(certs, index).with_suffix(".pub"))
        for index, shard in enumerate(shards):
            federation.start_supernode(
                f"supernode-{index:02d}", shard, node_key_path(certs, index), threads=options.threads_per_node,
                node_config=options.node_config(index),
            )  # fmt: skip
        federation.wait_online(len(shards), timeout=options.connect_timeout)
        log.info("%d SuperNodes connected; logs in %s", len(shards), federation.logs)
        if options.malicious:
            log.warning("partitions 0..%d are malicious: %s", options.malicious - 1, options.attacker.to_node_config())
        run_config = run_cfg.model_copy(update={"test_path": str((options.data / TEST_FILE).resolve())})
        record_attack(options, run_cfg)
        run_id = federation.control.submit(run_config.to_run_config())
        log.info("run %d submitted: %s", run_id, describe(run_cfg))

        def superlink_alive() -> None:
            if federation.processes["superlink"].poll() is not None:
                raise LauncherError(f"the SuperLink died during run {run_id}:\n{federation.log_tail('superlink')}")
            if watch:
                watch(federation)

        return follow(federation.control, run_id, run_cfg, check=superlink_alive)
    except KeyboardInterrupt:
        if run_id is not None:
            federation.control.stop_run(run_id)
        raise
    finally:
        federation.stop_all()


def record_attack(options: FederateOptions, run_cfg: FederationConfig) -> None:
    """attack.json in the results directory: which partitions attack, and how (what the results alone do not
    say). Written before the run starts, so that a run that fails or is stopped keeps it; not over a run the
    ServerApp will refuse to overwrite (a results directory that holds one, without --resume)."""
    if not options.malicious:
        return
    results = Results(Path(run_cfg.results_dir))
    if results.last_complete_round() is not None and not run_cfg.resume:
        return
    results.dir.mkdir(parents=True, exist_ok=True)
    attack = {"malicious-partitions": list(range(options.malicious)), **options.attacker.model_dump(by_alias=True)}
    (results.dir / ATTACK_FILE).write_text(json.dumps(attack, indent=1) + "\n")


def default_threads(nodes_per_round: int) -> int:
    """Torch threads per SuperNode: the cores shared by the nodes that train at once."""
    return max(1, (os.cpu_count() or 1) // nodes_per_round)
