"""The SuperLink and SuperNode entry points: their flags, their quieter log, their clearer refusal line."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from flwr.supercore.http_logging import RoutineAccessFilter
from flwr.supercore.logger import FLOWER_LOGGER

from ecg_fat import superlink, supernode


def _access(path: str, status: int) -> logging.LogRecord:
    """A uvicorn access record as uvicorn makes it: (client, method, path, version, status)."""
    return logging.LogRecord(
        "uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d', ("127.0.0.1:1", "POST", path, "1.1", status),
        None,
    )  # fmt: skip


def test_superlink_flags_are_tls_grpc_and_node_auth() -> None:
    args = superlink.superlink_args(Path("/c"), "0.0.0.0:9092", "127.0.0.1", 8000, "/state/state.db")
    assert "--ssl-certfile=/c/server.pem" in args and "--enable-supernode-auth" in args
    assert "--fleet-api-type=grpc-rere" in args and "--disable-runtime-dependency-installation" in args
    assert not any("insecure" in arg for arg in args)


def test_routine_polls_are_not_logged_at_info(monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.supercore import http_logging

    monkeypatch.setattr(http_logging, "ROUTINE_ACCESS_PATHS", http_logging.ROUTINE_ACCESS_PATHS)
    before = list(FLOWER_LOGGER.filters)
    try:
        superlink.quiet_routine_polling()
        access = RoutineAccessFilter(debug_enabled=False)
        assert not access.filter(_access("/v1/control/list-nodes", 200))
        assert access.filter(_access("/v1/control/list-nodes", 500))  # a failure is never hidden
        assert access.filter(_access("/v1/control/start-run", 200))  # what happens stays at INFO
        routine = logging.LogRecord("flwr", logging.INFO, "", 0, "ControlServicer.ListNodes", None, None)
        event = logging.LogRecord("flwr", logging.INFO, "", 0, "ControlServicer.StartRun", None, None)
        for record in (routine, event):
            FLOWER_LOGGER.filters[-1].filter(record)
        assert (routine.levelno, event.levelno) == (logging.DEBUG, logging.INFO)
    finally:
        FLOWER_LOGGER.filters[:] = before


def test_unregistered_key_is_named_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    flower = (
        "Exit Code: 305\nFailed to initialize the connection to the SuperLink.\n"
        "[code: 2004] Failed to activate SuperNode.\nThe SuperNode could not establish a connection to the SuperLink."
    )
    record = logging.LogRecord("flwr", logging.ERROR, "", 0, "%s", (flower,), None)
    monkeypatch.setenv(supernode.KEY_HINT, "./hospital-a/keys/node.pub")
    supernode._ExplainUnregisteredKey().filter(record)
    line = record.getMessage()
    assert "\n" not in line and "could not establish a connection" not in line
    assert "send docker/site/hospital-a/keys/node.pub to the server's operator" in line
    assert "(Flower: [code: 2004] Failed to activate SuperNode.)" in line
    other = logging.LogRecord("flwr", logging.ERROR, "", 0, "Exit Code: 305\nconnection refused", None, None)
    supernode._ExplainUnregisteredKey().filter(other)
    assert other.getMessage() == "Exit Code: 305\nconnection refused"  # a network failure stays Flower's
