"""Container healthchecks (stdlib only).

superlink: its Control API answers GET /health over TLS, verified with the federation's CA.
supernode: its gRPC health service (started with --health-server-address) reports SERVING.
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.request


def superlink() -> bool:
    context = ssl.create_default_context(cafile=os.environ.get("ECG_FAT_CA", "/certs/ca.crt"))
    with urllib.request.urlopen("https://localhost:8000/health", context=context, timeout=4) as answer:
        return answer.status == 200


def supernode() -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(os.environ.get("ECG_FAT_HEALTH", "127.0.0.1:9095")) as channel:  # loopback only
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=4)
        return answer.status == health_pb2.HealthCheckResponse.SERVING


if __name__ == "__main__":
    try:
        sys.exit(0 if {"superlink": superlink, "supernode": supernode}[sys.argv[1]]() else 1)
    except Exception as error:  # any failure is "unhealthy"; say why in `docker inspect`
        print(f"unhealthy: {error}", file=sys.stderr)
        sys.exit(1)
