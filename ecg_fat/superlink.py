"""`ecg-fat-superlink`: Flower's SuperLink with this project's settings; its command line is written here once.

Both composes and the local launcher start the SuperLink through this entry point: TLS with the
federation's certificates, the Fleet API as gRPC (`grpc-rere`), SuperNode authentication, no runtime
dependency installation. Routine polling of the Control API (the runner asking for the node list and the
run status) is logged at DEBUG instead of INFO, so the log shows what happens, not that it was asked.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

IN_MEMORY_STATE = ":flwr-in-memory:"  # flwr.supercore.constant.FLWR_IN_MEMORY_DB_NAME
ROUTINE_CONTROL_CALLS = {"ControlServicer.ListNodes", "ControlServicer.ListRuns"}
# HTTP calls that repeat all run long: the runner's polls, and the ServerApp's own message and object
# transfers through the Runtime API (each also logged once as an event by Flower, e.g. "Push replies").
ROUTINE_PATHS = {
    "/v1/control/list-nodes",
    "/v1/control/list-runs",
    "/v1/runtime/pull-messages",
    "/v1/runtime/push-messages",
    "/v1/runtime/pull-object",
    "/v1/runtime/push-object",
    "/v1/runtime/confirm-message-received",
}


def superlink_args(certs: Path, fleet_address: str, host: str, port: int, database: str) -> list[str]:
    """The flower-superlink flags of every ECG-FAT deployment."""
    return [
        f"--ssl-ca-certfile={certs / 'ca.crt'}",
        f"--ssl-certfile={certs / 'server.pem'}",
        f"--ssl-keyfile={certs / 'server.key'}",
        "--fleet-api-type=grpc-rere",
        f"--fleet-api-address={fleet_address}",
        f"--host={host}",
        f"--port={port}",
        "--enable-supernode-auth",
        f"--database={database}",
        "--disable-runtime-dependency-installation",
    ]


class _RoutineToDebug(logging.Filter):
    """Flower's console handler shows INFO and up (DEBUG with FLWR_LOG_LEVEL=DEBUG): a demoted record
    is shown only at DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO and record.getMessage() in ROUTINE_CONTROL_CALLS:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


def quiet_routine_polling() -> None:
    """Demote the log lines of routine polls and transfers (successful ones only) to DEBUG."""
    from flwr.supercore import http_logging
    from flwr.supercore.logger import FLOWER_LOGGER

    FLOWER_LOGGER.addFilter(_RoutineToDebug())
    # Flower hides its own routine HTTP paths (health checks, some of the runtime's polls) from the access
    # log unless at DEBUG, reading this module-level set at every request; it gets these paths too.
    http_logging.ROUTINE_ACCESS_PATHS = frozenset(http_logging.ROUTINE_ACCESS_PATHS | ROUTINE_PATHS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ecg-fat-superlink", description=__doc__)
    parser.add_argument("--certs", type=Path, default=Path("/certs"), help="ca.crt, server.pem, server.key")
    parser.add_argument("--fleet-address", default="0.0.0.0:9092", help="the SuperNodes' TLS gRPC address")
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="the Control and Runtime API's (HTTPS) address; loopback by default: Flower 1.39's Control API "
        "asks for no credential, so only processes in this network namespace (the operator's runner, the "
        "SuperLink's own ServerApp) may reach it",
    )
    parser.add_argument("--port", type=int, default=8000, help="the Control and Runtime API's port")
    parser.add_argument(
        "--database", default="/state/state.db", help=f"state database, or {IN_MEMORY_STATE} (none kept)"
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    from flwr.superlink.cli import flower_superlink

    quiet_routine_polling()
    sys.argv = [
        "flower-superlink",
        *superlink_args(args.certs.resolve(), args.fleet_address, args.host, args.port, args.database),
    ]
    flower_superlink()


if __name__ == "__main__":
    main()
