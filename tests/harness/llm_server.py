"""Real OpenAI-compatible servers that nobody here wrote, serving tiny models written at test time.

- `TransformersServe`: `transformers serve` (the `transformers[serving]` package, on torch's CPU build),
  serving the Hugging Face layout model of `tiny_hf`. Usage in the JSON answer, and in a last SSE chunk
  with empty `choices` when the request says `stream_options: {include_usage: true}`. In the test extra.
- `LlamaCppPython`: llama-cpp-python's server (`python -m llama_cpp.server`, the `[server]` extra), in
  the interpreter running the tests. Usage in the JSON answer; its streams carry no usage at all (it
  ignores `stream_options`, 0.3.x).
- `LlamaServer`: llama.cpp's own `llama-server` (C++), found by `meshgate.binaries.find`. Usage in the
  JSON answer, and in a last SSE chunk with empty `choices` when the request says
  `stream_options: {include_usage: true}` (vLLM's and OpenAI's shape).

The two llama.cpp servers are not in the test extra (both compile llama.cpp, 12 to 13 CPU-minutes:
docs/llm.md, "Real servers in the tests"); `available()` says whether one is here, and the tests skip
the one that is not. All start on a free port, answer on 127.0.0.1 only, and are stopped by PID.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import ClassVar

from meshgate import binaries
from tests.harness.procs import Proc, child_env, free_port, wait_for_http
from tests.harness.tiny_gguf import write_tiny_llama
from tests.harness.tiny_hf import write_tiny_hf_llama

__all__ = ["LlamaCppPython", "LlamaServer", "RealLLMServer", "TransformersServe"]


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
        self.workdir = workdir
        self.model_path = self.write_model()
        self.proc = Proc(self.kind, self.argv(), log_dir=workdir, env=self.env(), cwd=workdir)

    def write_model(self) -> Path:
        return write_tiny_llama(self.workdir / "tiny-llama.gguf")

    def env(self) -> dict[str, str] | None:
        return None

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


class TransformersServe(RealLLMServer):
    """`transformers serve MODEL` pins the server to MODEL, the name requests must carry: the model is a
    directory of that name in the working directory (from_pretrained reads a local directory first)."""

    kind = "transformers-serve"
    reports_stream_usage = True
    ready_path = "/v1/models"
    startup_timeout = 120.0  # importing torch and transformers: ~20 s on a loaded 2-core machine

    @classmethod
    def available(cls) -> str | None:
        for module in ("transformers", "torch", "fastapi", "uvicorn", "safetensors"):
            if importlib.util.find_spec(module) is None:
                return f"transformers serve is not installed ({module}: pip install -e '.[test]')"
        return None

    def write_model(self) -> Path:
        if "/" in self.model or self.model.startswith("."):
            raise ValueError(f"{self.model!r}: the model's name is a directory name here")
        return write_tiny_hf_llama(self.workdir / self.model)

    def env(self) -> dict[str, str]:
        # no hub: nothing to download, no update check, caches inside the test's directory
        return child_env({"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_UPDATE_CHECK": "1",
                          "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HOME": str(self.workdir / "hf-home")})  # fmt: skip

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "transformers.cli.transformers", "serve", self.model,
                "--host", self.host, "--port", str(self.port), "--device", "cpu"]  # fmt: skip
