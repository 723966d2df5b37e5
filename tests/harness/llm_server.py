"""Real OpenAI-compatible servers that nobody here wrote, serving the tiny GGUF model of `tiny_gguf`.

- `LlamaCppPython`: llama-cpp-python's server (`python -m llama_cpp.server`, the `[server]` extra), in
  the interpreter running the tests. Usage in the JSON answer; its streams carry no usage at all (it
  ignores `stream_options`, 0.3.x).
- `LlamaServer`: llama.cpp's own `llama-server` (C++), found by `meshgate.binaries.find`. Usage in the
  JSON answer, and in a last SSE chunk with empty `choices` when the request says
  `stream_options: {include_usage: true}` (vLLM's and OpenAI's shape).

Neither installs with `pip install -e '.[test]'` in minutes on a 2-core machine (both compile llama.cpp:
docs/llm.md, "Real servers in the tests"); `available()` says whether one is here, and the tests skip
the one that is not. Both start on a free port, answer on 127.0.0.1 only, and are stopped by PID.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import ClassVar

from meshgate import binaries
from tests.harness.procs import Proc, free_port, wait_for_http
from tests.harness.tiny_gguf import write_tiny_llama

__all__ = ["LlamaCppPython", "LlamaServer", "RealLLMServer"]


class RealLLMServer:
    """One server process for one model file; `url` is its base (`/v1/...` below it)."""

    host = "127.0.0.1"
    kind: ClassVar[str]
    reports_stream_usage: ClassVar[bool]
    ready_path: ClassVar[str]
    startup_timeout = 60.0

    def __init__(self, workdir: Path, *, model: str) -> None:
        self.model = model
        self.port = free_port()
        self.model_path = write_tiny_llama(workdir / "tiny-llama.gguf")
        self.proc = Proc(self.kind, self.argv(), log_dir=workdir)

    @classmethod
    def available(cls) -> str | None:
        """None when the server can run here, else why not (the skip reason)."""
        raise NotImplementedError

    def argv(self) -> list[str]:
        raise NotImplementedError

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> RealLLMServer:
        self.proc.start()
        wait_for_http(f"{self.url}{self.ready_path}", self.startup_timeout, proc=self.proc)
        return self

    def stop(self, timeout: float = 10.0) -> int | None:
        return self.proc.stop(timeout)


class LlamaCppPython(RealLLMServer):
    kind = "llama-cpp-python"
    reports_stream_usage = False
    ready_path = "/v1/models"

    @classmethod
    def available(cls) -> str | None:
        for module in ("llama_cpp", "fastapi", "uvicorn", "sse_starlette", "starlette_context"):
            if importlib.util.find_spec(module) is None:
                return f"llama-cpp-python's server is not installed ({module}: pip install 'llama-cpp-python[server]')"
        return None

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "llama_cpp.server", "--model", str(self.model_path),
                "--model_alias", self.model, "--host", self.host, "--port", str(self.port),
                "--n_ctx", "2048", "--n_threads", "1", "--seed", "0", "--verbose", "false"]  # fmt: skip


class LlamaServer(RealLLMServer):
    kind = "llama-server"
    reports_stream_usage = True
    ready_path = "/health"

    @classmethod
    def available(cls) -> str | None:
        try:
            binaries.find("llama-server")
        except binaries.MissingExecutable as missing:
            return str(missing)
        return None

    def argv(self) -> list[str]:
        return [binaries.find("llama-server"), "--model", str(self.model_path), "--alias", self.model,
                "--host", self.host, "--port", str(self.port), "--ctx-size", "2048", "--parallel", "1",
                "--threads", "1", "--seed", "0", "--no-webui"]  # fmt: skip
