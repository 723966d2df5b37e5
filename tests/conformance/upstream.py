"""In-process model stand-ins for the conformance suite: they answer at once and echo what reached them.

- `EchoHTTP`: any path, any method. OpenAI chat/completions get an OpenAI answer with a `usage` of
  USAGE_TOKENS; anything else a JSON `{"path": ...}`. Every answer carries `echo`: the request's
  `x-meshgate-*` headers, i.e. what the gateway let through to the model.
- `EchoGRPC`: Triton's `inference.GRPCInferenceService/ModelInfer`, answering with the request's model
  name and its `x-meshgate-*` metadata as response parameters `echo.<header>`.
"""

from __future__ import annotations

import json
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler
from typing import Any

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from meshgate import contract
from tests.harness.http import QuietHTTPServer

__all__ = ["USAGE_TOKENS", "EchoGRPC", "EchoHTTP"]

USAGE_TOKENS = 20


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        echo = {k.lower(): v for k, v in self.headers.items() if k.lower().startswith(contract.HEADER_PREFIX)}
        doc: dict[str, Any] = {"path": self.path, "echo": echo}
        if self.path.startswith("/v1/chat/completions"):
            request = json.loads(raw or b"{}")
            doc |= {
                "object": "chat.completion",
                "model": request.get("model", ""),
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
                ],
                "usage": {
                    "prompt_tokens": 5,
                    "completion_tokens": USAGE_TOKENS - 5,
                    "total_tokens": USAGE_TOKENS,
                },
            }
        body = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = _answer

    def log_message(self, *args: Any) -> None:
        pass


class EchoHTTP:
    def __init__(self) -> None:
        self.server = QuietHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="echo-http", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Inference(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    def ModelInfer(self, request: Any, context: grpc.ServicerContext) -> Any:
        response = service_pb2.ModelInferResponse(
            model_name=request.model_name, model_version="1", id=request.id
        )
        for key, value in context.invocation_metadata():
            if key.startswith(contract.HEADER_PREFIX):
                response.parameters[f"echo.{key}"].string_param = value
        return response


class EchoGRPC:
    def __init__(self) -> None:
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(_Inference(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def close(self) -> None:
        self.server.stop(None)
