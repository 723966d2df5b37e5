"""What one call to a Python server costs when the server was idle, as a gateway's calls to meshgate are
between requests that wait on a model (not a test; docs/llm.md, "Where the first token's time goes").

    python bench/grpc_idle_wake.py [--gap 0.05] [--calls 150] [--rounds 2]

Starts each server below in a process of its own on 127.0.0.1 and calls it from this one, one call at a
time: back to back (hot), and after sleeping `--gap` seconds before each call (idle, like a call that
comes once per LLM request). Prints the p50 and p90 round trip in µs per server and mode. Servers:
`tcp-echo` (uvloop, a one-byte echo: the floor of two processes waking each other), `grpc-sync`
(grpc.server with a thread pool, a no-op unary method), `grpc-aio` (grpc.aio on uvloop, as `meshgate
serve` runs its services, a no-op unary method). The client is a blocking socket or a grpc channel.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent import futures

import grpc

SERVERS = ("tcp-echo", "grpc-sync", "grpc-aio")
_METHOD = "/bench.Idle/Call"


def _handlers(behavior: Callable[..., object]) -> grpc.GenericRpcHandler:
    handler = grpc.unary_unary_rpc_method_handler(behavior)
    return grpc.method_handlers_generic_handler("bench.Idle", {"Call": handler})


def serve(kind: str) -> None:
    """Run one server, print its port on the first line of stdout, serve until killed."""
    import uvloop

    if kind == "grpc-sync":
        server = grpc.server(futures.ThreadPoolExecutor(4))
        server.add_generic_rpc_handlers((_handlers(lambda request, context: b"ok"),))
        print(server.add_insecure_port("127.0.0.1:0"), flush=True)
        server.start()
        server.wait_for_termination()
        return

    async def answer(request: bytes, context: object) -> bytes:
        return b"ok"

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(64):
            writer.write(data)

    async def main() -> None:
        if kind == "tcp-echo":
            tcp = await asyncio.start_server(echo, "127.0.0.1", 0)
            print(tcp.sockets[0].getsockname()[1], flush=True)
            await tcp.serve_forever()
        aio = grpc.aio.server()
        aio.add_generic_rpc_handlers((_handlers(answer),))
        print(aio.add_insecure_port("127.0.0.1:0"), flush=True)
        await aio.start()
        await aio.wait_for_termination()

    uvloop.run(main())


def caller(kind: str, port: int) -> Callable[[], object]:
    if kind == "tcp-echo":
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def once() -> object:
            sock.sendall(b"x")
            return sock.recv(64)

        return once
    call = grpc.insecure_channel(f"127.0.0.1:{port}").unary_unary(_METHOD)
    return lambda: call(b"x")


def measure(call: Callable[[], object], gap: float, calls: int) -> tuple[float, float]:
    """p50 and p90 in µs."""
    rtt = []
    for _ in range(calls):
        if gap:
            time.sleep(gap)
        started = time.perf_counter()
        call()
        rtt.append((time.perf_counter() - started) * 1e6)
    rtt.sort()
    return statistics.median(rtt), rtt[int(0.9 * len(rtt))]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gap", type=float, default=0.05, help="idle seconds before each idle call")
    parser.add_argument("--calls", type=int, default=150, help="idle calls per server and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--serve", choices=SERVERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    with open("/proc/loadavg") as loadavg:
        print(f"loadavg {' '.join(loadavg.read().split()[:3])}; idle gap {args.gap * 1000:g} ms")
    print(f"{'server':10} {'round':>5} {'hot p50':>9} {'hot p90':>9} {'idle p50':>9} {'idle p90':>9}")
    for n in range(args.rounds):
        for kind in SERVERS:
            proc = subprocess.Popen(
                [sys.executable, __file__, "--serve", kind], stdout=subprocess.PIPE, text=True
            )
            try:
                assert proc.stdout is not None
                call = caller(kind, int(proc.stdout.readline()))
                measure(call, 0, 200)  # warm-up: connection, first calls
                hot = measure(call, 0, 10 * args.calls)
                idle = measure(call, args.gap, args.calls)
            finally:
                proc.terminate()
                proc.wait()
            print(f"{kind:10} {n + 1:5} {hot[0]:7.0f}us {hot[1]:7.0f}us {idle[0]:7.0f}us {idle[1]:7.0f}us")


if __name__ == "__main__":
    main()
