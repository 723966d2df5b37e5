"""In-process cost of one extauthz check (not a test): what meshgate's servicer adds to the gRPC transport.

    python bench/extauthz_inproc.py [--checks 20000] [--fresh] [--profile] [--http]

Runs, in one event loop and without sockets, what a grpc.aio server does in Python for each Check:
parse the CheckRequest bytes, call the servicer's work, serialize the CheckResponse. Once for a no-op
(an OK response, like bench/extauthz_bench.py's (b)) and once for `ExtAuthzService.check` with the
bench's policy (RS256 issuer, RBAC, audit log on at INFO into /dev/null). The request is the one Envoy
sends for the bench's `POST /v2/models/resnet/infer` (same headers, body and attributes).
`--fresh` uses a never-seen token per check (every signature verified), else one token (cache hits).
`--profile` prints the top of a cProfile of the meshgate loop instead of timing it.
`--http` times the HTTP transport's Check instead (`ExtAuthzService.check_http`: the request as the
HTTP edge hands it over, the HTTP/1.1 answer's bytes out; no parse: httptools' is outside), beside the
gRPC one on the same requests.

Deterministic count (instructions per check, repeatable on a busy machine): run the meshgate loop alone
(checks plus the audit flush) under callgrind, collecting only inside it, and divide "Collected" by N:
    valgrind --tool=callgrind --callgrind-out-file=/dev/null --collect-atstart=no \
        --toggle-collect=_PyEval_CallTracing python bench/extauthz_inproc.py --only meshgate --checks 2000
(and `--only noop` for the no-op's count).
To compare with another tree, put it first on PYTHONPATH (PYTHONPATH=/path/to/old/tree).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import logging
import os
import pstats
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from envoy.service.auth.v3 import external_auth_pb2
from google.rpc import code_pb2, status_pb2
from prometheus_client import CollectorRegistry

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))  # after PYTHONPATH: a tree put there is the one measured

from meshgate.extauthz import ExtAuthzService  # noqa: E402
from meshgate.extauthz.responses import to_check_input  # noqa: E402
from meshgate.policy.store import PolicyStore  # noqa: E402
from tests.unit.test_extauthz_support import make_policy, mint  # noqa: E402

CheckRequest = external_auth_pb2.CheckRequest
CheckResponse = external_auth_pb2.CheckResponse


def envoy_request(token: str) -> bytes:
    """The CheckRequest Envoy (1.3x, ext_authz with_request_body + pack_as_bytes) sends for the bench."""
    request = CheckRequest()
    attributes = request.attributes
    attributes.source.address.socket_address.address = "127.0.0.1"
    attributes.source.address.socket_address.port_value = 51450
    attributes.destination.address.socket_address.address = "127.0.0.1"
    attributes.destination.address.socket_address.port_value = 36963
    attributes.request.time.seconds = int(time.time())
    http = attributes.request.http
    http.id, http.method, http.path = "10628465759324305227", "POST", "/v2/models/resnet/infer"
    http.host, http.scheme, http.size, http.protocol = "127.0.0.1:36963", "http", 14, "HTTP/1.1"
    http.raw_body = b'{"inputs": []}'
    http.headers.update(
        {
            "x-request-id": "ef7d918f-d071-47f0-b80d-8e5a2dfe4ca5",
            "x-forwarded-proto": "http",
            "x-envoy-auth-partial-body": "false",
            "user-agent": "wrk",
            "content-type": "application/json",
            "content-length": "14",
            "authorization": f"Bearer {token}",
            "accept": "*/*",
            ":scheme": "http",
            ":path": "/v2/models/resnet/infer",
            ":method": "POST",
            ":authority": "127.0.0.1:36963",
        }
    )
    attributes.metadata_context.SetInParent()
    attributes.route_metadata_context.SetInParent()
    return request.SerializeToString()


def noop(request: CheckRequest) -> bytes:
    return bytes(CheckResponse(status=status_pb2.Status(code=code_pb2.OK)).SerializeToString())


def run_checks(handler: Callable[[CheckRequest], bytes | CheckResponse], requests: list[bytes]) -> float:
    """Seconds of process CPU for parse + handler + serialize over every request. (The handler serializes
    itself, as `ExtAuthzService.check` does, or returns a message, as older meshgate trees did.)"""
    parse, started = CheckRequest.FromString, time.process_time()
    for raw in requests:
        response = handler(parse(raw))
        if not isinstance(response, bytes):
            response.SerializeToString()
    return time.process_time() - started


def checks_and_audit(service: ExtAuthzService, requests: list[bytes]) -> None:
    """The checks and the audit flush that writes their lines."""
    run_checks(service.check, requests)
    service._audit.flush()


async def main(args: argparse.Namespace) -> None:
    audit = logging.getLogger("meshgate.extauthz.audit")
    audit.addHandler(logging.FileHandler(os.devnull))
    audit.setLevel(logging.INFO)
    audit.propagate = False
    with tempfile.TemporaryDirectory() as tmp:
        store = PolicyStore(Path(tmp) / "policy.yaml")
        service = ExtAuthzService(store, registry=CollectorRegistry())
        store.apply(make_policy())
    token = mint()
    requests = (
        [envoy_request(mint()) for _ in range(args.checks)]
        if args.fresh
        else [envoy_request(token)] * args.checks
    )
    warm = [envoy_request(token)] * 200
    run_checks(noop, warm)
    run_checks(service.check, warm)
    first = service.check(CheckRequest.FromString(requests[0]))
    first = CheckResponse.FromString(first) if isinstance(first, bytes) else first
    assert first.status.code == code_pb2.OK
    if args.profile:
        profiler = cProfile.Profile()
        profiler.runcall(run_checks, service.check, requests)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        return
    if args.http:
        await _http(service, requests, args.checks)
        return
    if args.only == "meshgate":  # sys.call_tracing: a C entry point used by nothing else, for callgrind
        sys.call_tracing(checks_and_audit, (service, requests))
        return
    if args.only == "noop":
        sys.call_tracing(run_checks, (noop, requests))
        return
    base = run_checks(noop, requests) / args.checks * 1e6
    started = time.process_time()
    checks_and_audit(service, requests)  # the audit lines are written (and formatted) at the flush
    ours = (time.process_time() - started) / args.checks * 1e6
    kind = "fresh token each" if args.fresh else "one token reused"
    print(f"{args.checks} checks, {kind}: no-op {base:.1f} us/check, meshgate {ours:.1f} us/check, "
          f"meshgate adds {ours - base:.1f} us")  # fmt: skip


async def _http(service: ExtAuthzService, requests: list[bytes], n: int) -> None:
    inputs = [to_check_input(CheckRequest.FromString(raw)) for raw in requests]
    for _ in range(200):
        await service.check_http(inputs[0])
    for _ in range(3):  # interleaved rounds: the two transports on the same machine state
        started = time.process_time()
        checks_and_audit(service, requests)
        grpc_us = (time.process_time() - started) / n * 1e6
        started = time.process_time()
        for req in inputs:
            await service.check_http(req)
        service._audit.flush()
        http_us = (time.process_time() - started) / n * 1e6
        print(
            f"{n} checks: gRPC (parse, check, bytes) {grpc_us:.1f} us/check; HTTP (check_http) {http_us:.1f}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checks", type=int, default=20000)
    parser.add_argument("--fresh", action="store_true", help="a never-seen token per check")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of the meshgate loop")
    parser.add_argument("--only", choices=["noop", "meshgate"], help="run that loop only, print nothing")
    parser.add_argument("--http", action="store_true", help="time check_http beside the gRPC check")
    asyncio.run(main(parser.parse_args()))
