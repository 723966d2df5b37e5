"""Types of the command line's flags (argparse calls them on the flag's text and on a MESHGATE_* default):
a bad value is refused with the flag named (`argument --xds: ...`), never a traceback later."""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable

__all__ = [
    "TOKEN",
    "address",
    "header",
    "listen_address",
    "log_level",
    "method",
    "port",
    "request_path",
    "seconds",
    "timeout",
]

_DAY = 86400.0
TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
"""An HTTP method or header name (RFC 9110 token)."""


def _host_port(value: str, *, lowest: int) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    bracketed = host.startswith("[") == host.endswith("]")
    digits = port.isascii() and port.isdigit()
    if not sep or not bracketed or not digits or not lowest <= int(port) <= 65535 or " " in host:
        raise argparse.ArgumentTypeError(
            f"expected HOST:PORT with a port from {lowest} to 65535, got {value!r}"
        )
    return host, int(port)


def listen_address(value: str) -> str:
    """An address to listen on: HOST:PORT, [IPV6]:PORT or :PORT (every interface); port 0: any free one."""
    _host_port(value, lowest=0)
    return value


def address(value: str) -> str:
    """An address to connect to: a host and a port from 1 to 65535."""
    host, _ = _host_port(value, lowest=1)
    if not host.strip("[]"):
        raise argparse.ArgumentTypeError(f"expected HOST:PORT with a host, got {value!r}")
    return value


def port(value: str) -> int:
    return int(_within(value, int, 1, 65535, "a port"))


def seconds(value: str) -> float:
    """A number of seconds from 0 to a day (a drain or grace of 1e308 would never end)."""
    return _within(value, float, 0, _DAY, "a number of seconds")


def _within(value: str, parse: Callable[[str], float], low: float, high: float, what: str) -> float:
    try:
        number = parse(value)
    except ValueError:
        number = math.nan
    if not low <= number <= high:  # (nan fails too)
        raise argparse.ArgumentTypeError(f"expected {what} from {low:g} to {high:g}, got {value!r}")
    return number


def timeout(value: str) -> float:
    """A client's timeout: more than 0 seconds, at most a day."""
    number = seconds(value)
    if number == 0:
        raise argparse.ArgumentTypeError(f"expected a timeout of more than 0 seconds, got {value!r}")
    return number


def log_level(value: str) -> str:
    if value.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise argparse.ArgumentTypeError(f"expected debug, info, warning or error, got {value!r}")
    return value.lower()


def method(value: str) -> str:
    if not TOKEN.match(value):
        raise argparse.ArgumentTypeError(f"expected an HTTP method (a token, e.g. POST), got {value!r}")
    return value


def request_path(value: str) -> str:
    if not value.startswith("/") or any(c in value for c in "\r\n\0 "):
        raise argparse.ArgumentTypeError(f"expected a path starting with '/' (and its query), got {value!r}")
    return value


def header(line: str) -> tuple[str, str]:
    """`Name: value` -> (name, value); ValueError for a name that is no token or a value with CR, LF or
    NUL (which would be another header)."""
    name, sep, value = line.partition(":")
    if not sep or not TOKEN.match(name.strip()) or any(c in value for c in "\r\n\0"):
        raise ValueError(f"a header is 'Name: value' on one line, got {line[:64]!r}")
    return name.strip().lower(), value.strip()
