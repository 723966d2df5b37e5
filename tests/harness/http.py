"""A stdlib HTTP server in a thread on 127.0.0.1:0, for small test peers (JWKS issuers, echo or
OpenAI-style backends). Used as a context manager: the server is shut down and its thread joined."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self

__all__ = ["ThreadedHTTP"]


class ThreadedHTTP:
    def __init__(self, handler: type[BaseHTTPRequestHandler], *, name: str) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, name=name, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)
