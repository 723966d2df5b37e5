"""Where `meshgate serve` listens: its addresses parsed, its gRPC servers and sockets bound, its metrics
server and ready file, each failure an OSError naming the address and its role (`run` logs it as
`cannot start: ...`)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from prometheus_client import CollectorRegistry, start_http_server

from .tls import server_credentials

if TYPE_CHECKING:
    from .server import ServeConfig

__all__ = [
    "ROLES",
    "bind_port",
    "bind_socket",
    "check_ready_file",
    "listen",
    "local_address",
    "metrics_server",
    "split_address",
    "write_ready_file",
]

ROLES = ("extauthz", "ratelimit", "xds")
"""The gRPC roles: one server each, or one for those sharing an address."""


def local_address(listen: str, port: int) -> str:
    """`host:port` of a server as a local peer reaches it (0.0.0.0 and :: read as 127.0.0.1)."""
    host = split_address(listen)[0]
    return f"{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


def bind_socket(address: str) -> socket.socket:
    """A listening TCP socket for extauthz over HTTP (bound before any service exists, as `_listen`)."""
    host, port = split_address(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {address}: {exc}") from exc
    sock.setblocking(False)
    return sock


def listen(config: ServeConfig) -> tuple[list[tuple[grpc.aio.Server, list[str]]], dict[str, int]]:
    """Bind one grpc.aio server per distinct address (port 0: one each), before any service exists,
    so services (xds) can be built knowing where the others really listen."""
    by_address: dict[tuple[str, str], list[str]] = {}
    for role in ROLES:
        address = config.listen[role]
        key = (address, role if split_address(address)[1] == 0 else "")
        by_address.setdefault(key, []).append(role)
    credentials = server_credentials(config.tls) if config.tls else None
    servers, ports = [], {}
    for (address, _), roles in by_address.items():
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        if credentials is not None and "xds" in roles:
            if roles != ["xds"]:
                raise OSError(f"with TLS, xds needs an address of its own ({address} is shared with {roles})")
            port = bind_port(server.add_secure_port, address, roles, credentials)
        else:
            port = bind_port(server.add_insecure_port, address, roles)
        servers.append((server, roles))
        for role in roles:
            ports[role] = port
    return servers, ports


def bind_port(add: Any, address: str, roles: list[str], *args: Any) -> int:
    """`add(address, *args)`, gRPC's add_*_port: an error naming the address and its role (gRPC raises a
    bare "Failed to bind" where older releases returned 0)."""
    try:
        port = int(add(address, *args))
    except RuntimeError:
        port = 0
    if port == 0:
        raise OSError(f"cannot listen on {address} ({', '.join(roles)}): in use, or not this host's address")
    return port


def metrics_server(address: str, registry: CollectorRegistry) -> Any:
    host, port = split_address(address)
    try:
        return start_http_server(port, addr=host, registry=registry)[0]
    except OSError as exc:
        raise OSError(f"cannot listen on {address} (metrics): {exc.strerror or exc}") from None


def check_ready_file(path: Path | None) -> None:
    """Before anything starts: where the ready file goes must be a directory that exists."""
    if path is not None and (not path.parent.is_dir() or path.is_dir()):
        raise OSError(f"--ready-file {path}: not a file in an existing directory")


def write_ready_file(path: Path, ports: dict[str, int]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({**ports, "pid": os.getpid()}))
    tmp.replace(path)
