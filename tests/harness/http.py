"""A stdlib HTTP server in a thread on 127.0.0.1:0, for small test peers (JWKS issuers, echo or
OpenAI-style backends). Used as a context manager: the server is shut down and its thread joined."""

from __future__ import annotations

import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

__all__ = ["QuietHTTPServer", "ThreadedHTTP"]


class QuietHTTPServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer that leaves out the traceback of a client that went away (an Envoy stopped
    with a keep-alive connection open); any other error is printed as usual."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class ThreadedHTTP:
    def __init__(self, handler: type[BaseHTTPRequestHandler], *, name: str) -> None:
        self.server = QuietHTTPServer(("127.0.0.1", 0), handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, name=name, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)
