"""The quickstart's two model backends, each its own process on 127.0.0.1.

    python examples/quickstart_models.py iris --version v1 --http-port 9101 --grpc-port 9111
    python examples/quickstart_models.py chat --model zen-chat --port 9201

iris: a real classifier served by KServe's ModelServer (Open Inference Protocol v2, REST and gRPC). At
start it trains on the iris data set that scikit-learn ships (150 flowers, 4 measurements in cm) — no
download. Each version is another algorithm, so a canary is a real model change: v1 logistic
regression, v2 k-nearest neighbours, v3 a decision tree. Input ``INPUT0`` FP32 [N, 4] (sepal length,
sepal width, petal length, petal width); outputs ``CLASS`` INT32 [N] (0 setosa, 1 versicolor,
2 virginica) and ``PROBABILITIES`` FP32 [N, 3]. The response carries ``model_version``.

chat: a stand-in for an OpenAI-compatible LLM server (no LLM runs on a laptop-sized CPU in a minute),
built on the standard library. It is a *fake server*: it answers ``POST /v1/chat/completions`` (JSON, or
SSE with ``stream: true``; usage in the last chunk only with ``stream_options.include_usage``, and
``stream_options`` without ``stream`` refused with a 400, as vLLM does), ``POST /v1/embeddings``, ``POST
/v1/responses`` (JSON or its event stream), the same under ``/openai/v1/`` (KServe's Hugging Face
runtime), ``GET /v1/models`` and ``GET /health`` in the shapes of vLLM's OpenAI server. Its model is
real if tiny: a word bigram chain trained at start on the Zen of Python (the stdlib's ``this`` module),
seeded by the prompt so an answer repeats. Tokens are counted as whitespace-separated words.
"""

from __future__ import annotations

import argparse
import codecs
import itertools
import json
import random
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

IRIS_CLASSES = ("setosa", "versicolor", "virginica")
IRIS_ALGORITHMS = {"v1": "logistic regression", "v2": "k-nearest neighbours", "v3": "decision tree"}


# --- iris: KServe ModelServer ------------------------------------------------------------------------


def train_iris(version: str) -> Any:
    """An sklearn classifier for `version`, fitted on the iris data sklearn ships."""
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.tree import DecisionTreeClassifier

    data = load_iris()
    models = {
        "v1": lambda: LogisticRegression(max_iter=500),
        "v2": lambda: KNeighborsClassifier(n_neighbors=5),
        "v3": lambda: DecisionTreeClassifier(random_state=0),
    }
    return models.get(version, models["v1"])().fit(data.data, data.target)


def serve_iris(name: str, version: str, http_port: int, grpc_port: int) -> None:
    sys.argv = sys.argv[:1]  # kserve parses sys.argv when kserve.model_server is imported
    import kserve
    import numpy as np
    from kserve.errors import InvalidInput

    classifier = train_iris(version)

    class IrisModel(kserve.Model):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__(name)
            self.ready = True

        async def predict(self, payload: Any, headers: Any = None, response_headers: Any = None) -> Any:
            tensor = payload.get_input_by_name("INPUT0")
            if tensor is None or len(tensor.shape) != 2 or tensor.shape[1] != 4:
                raise InvalidInput("iris expects INPUT0, FP32 [N, 4]: sepal length/width, petal length/width")
            features = tensor.as_numpy().astype(np.float64)
            classes = classifier.predict(features).astype(np.int32)
            probabilities = classifier.predict_proba(features).astype(np.float32)
            outputs = []
            for out_name, array, datatype in (
                ("CLASS", classes, "INT32"),
                ("PROBABILITIES", probabilities, "FP32"),
            ):
                output = kserve.InferOutput(out_name, list(array.shape), datatype)
                output.set_data_from_numpy(array, binary_data=False)
                outputs.append(output)
            return kserve.InferResponse(
                response_id=payload.id or str(uuid.uuid4()),
                model_name=name,
                model_version=version,
                infer_outputs=outputs,
                use_binary_outputs=payload.use_binary_outputs,
                requested_outputs=payload.request_outputs,
            )

    server = kserve.ModelServer(
        http_port=http_port, grpc_port=grpc_port, workers=1, enable_latency_logging=False, grace_period=2
    )
    server.start([IrisModel()])


# --- chat: a stand-in for vLLM's OpenAI server ---------------------------------------------------------


def zen_words() -> list[str]:
    """The Zen of Python as words (the stdlib's `this` module holds it ROT13-encoded)."""
    import this  # noqa: F401  (importing prints it; stdout is the log here)

    return codecs.decode(sys.modules["this"].s, "rot13").split()


class BigramChat:
    """A word bigram chain: the next word is drawn from the words that followed the current one."""

    def __init__(self, words: list[str]) -> None:
        self.follows: dict[str, list[str]] = {}
        for current, following in itertools.pairwise(words):
            self.follows.setdefault(current, []).append(following)
        self.starts = [w for w in words if w[:1].isupper()]

    def words(self, prompt: str, max_words: int, *, ignore_eos: bool = False) -> Iterator[str]:
        """Up to `max_words` words, ending at the first sentence end unless `ignore_eos` (vLLM's
        sampling parameter of that name)."""
        rng = random.Random(prompt)  # noqa: S311 - a toy model, not cryptography
        word = rng.choice(self.starts)
        for _ in range(max_words):
            yield word
            if word.endswith(".") and not ignore_eos:
                return
            word = rng.choice(self.follows.get(word) or self.starts)


def _count(text: str) -> int:
    return len(text.split())


def _prompt(messages: Any) -> str:
    if not isinstance(messages, list):
        return ""
    parts = [m.get("content") for m in messages if isinstance(m, dict)]
    return "\n".join(p for p in parts if isinstance(p, str))


def embeddings(model_name: str, inputs: Any) -> dict[str, Any]:
    """OpenAI's embeddings answer: a 4-number vector per input (its word count, its length, ...)."""
    texts = [inputs] if isinstance(inputs, str) else [t for t in inputs or [] if isinstance(t, str)]
    data = [{"object": "embedding", "index": i, "embedding": [float(_count(t)), float(len(t)), 0.5, -0.5]}
            for i, t in enumerate(texts)]  # fmt: skip
    tokens = sum(_count(t) for t in texts)
    return {"object": "list", "data": data, "model": model_name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}  # fmt: skip


def chat_handler(
    model_name: str,
    model: BigramChat,
    *,
    token_delay: float = 0.0,
    first_token_delay: float | None = None,
    hold_streams: bool = False,
    split_events: bool = False,
    json_type: str = "application/json",
    stream_usage: bool = True,
) -> type[BaseHTTPRequestHandler]:
    """The handler class; `token_delay` seconds pass before each streamed word (a decode step), and
    `first_token_delay` (None: `token_delay`) before the first one instead (a model's prefill). With
    `hold_streams`, every stream stops after its first word until `POST /_release` (tests that need
    several streams in flight at once, without timing). `json_type`: the content-type of JSON answers.
    Without `stream_usage`, a stream never ends with usage, whatever `stream_options` asks: as
    llama-cpp-python's server (0.3.36), which ignores `stream_options`."""
    release = threading.Event()
    if not hold_streams:
        release.set()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # each SSE chunk leaves at once, as from vLLM's server

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _json(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
            self.send_response(status)
            self.send_header("content-type", json_type)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, message: str) -> None:
            self._json(
                status,
                {
                    "object": "error",
                    "message": message,
                    "type": "BadRequestError",
                    "param": None,
                    "code": status,
                },
            )

        def do_GET(self) -> None:
            if self.path == "/health":
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()
            elif self.path == "/v1/models":
                card = {
                    "id": model_name,
                    "object": "model",
                    "created": int(time.time()),
                    "owned_by": "vllm",
                    "root": model_name,
                    "parent": None,
                    "max_model_len": 4096,
                    "permission": [],
                }
                self._json(200, {"object": "list", "data": [card]})
            else:
                self._error(404, f"no route {self.path}")

        def _body(self) -> bytes:
            """The request body, sized or chunked (a gateway that rewrites a body sends it chunked)."""
            if "chunked" not in (self.headers.get("transfer-encoding") or "").lower():
                return self.rfile.read(int(self.headers.get("content-length") or 0))
            body = bytearray()
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                body += self.rfile.read(size)
                self.rfile.readline()  # the CRLF after each chunk
            while self.rfile.readline().strip():  # trailers, up to the empty line
                pass
            return bytes(body)

        def do_POST(self) -> None:
            if self.path == "/_release":
                release.set()
                self._json(200, {"released": True})
                return
            try:
                request = json.loads(self._body())
            except ValueError:
                self._error(400, "the body is not JSON")
                return
            path = self.path.removeprefix("/openai")  # KServe's Hugging Face runtime serves /openai/v1/
            if path not in ("/v1/chat/completions", "/v1/embeddings", "/v1/responses") or not isinstance(
                request, dict
            ):
                self._error(404, f"no route {self.path}")
                return
            if request.get("model") != model_name:
                self._error(404, f"The model `{request.get('model')}` does not exist.")
                return
            if path == "/v1/embeddings":
                self._json(200, embeddings(model_name, request.get("input")))
                return
            if path == "/v1/responses":
                self._responses(request)
                return
            if request.get("stream_options") and not request.get("stream"):  # vLLM refuses it too
                self._error(400, "Stream options can only be defined when `stream=True`.")
                return
            prompt = _prompt(request.get("messages"))
            max_words = int(request.get("max_tokens") or request.get("max_completion_tokens") or 32)
            ignore_eos = request.get("ignore_eos") is True
            words = list(model.words(prompt, max(1, min(max_words, 256)), ignore_eos=ignore_eos))
            usage = {
                "prompt_tokens": _count(prompt),
                "total_tokens": _count(prompt) + len(words),
                "completion_tokens": len(words),
                "prompt_tokens_details": None,
            }
            finish = "stop" if words[-1].endswith(".") else "length"
            head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": model_name}
            if request.get("stream"):
                include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
                self._stream(head, words, finish, usage if include_usage and stream_usage else None)
                return
            n = request.get("n") or 1  # choices (JSON answers only here): each the same words
            if not isinstance(n, int) or n < 1:
                self._error(400, "n must be a positive integer")
                return
            usage["completion_tokens"] = n * len(words)
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
            message = {
                "role": "assistant",
                "content": " ".join(words),
                "reasoning_content": None,
                "tool_calls": [],
            }
            done = {"logprobs": None, "finish_reason": finish, "stop_reason": None}
            choices = [{"index": i, "message": message, **done} for i in range(n)]
            self._json(
                200,
                {
                    **head,
                    "object": "chat.completion",
                    "choices": choices,
                    "usage": usage,
                    "prompt_logprobs": None,
                },
            )

        def _responses(self, request: dict[str, Any]) -> None:
            """OpenAI's Responses API: JSON, or an event stream ending with `response.completed` (its
            usage inside, always); stream_options is refused, as a strict server would."""
            if request.get("stream_options") is not None:
                self._error(400, "stream_options is not a Responses API parameter")
                return
            prompt = request.get("input") if isinstance(request.get("input"), str) else ""
            words = list(model.words(prompt, max(1, min(int(request.get("max_output_tokens") or 16), 256))))
            text = " ".join(words)
            usage = {"input_tokens": _count(prompt), "output_tokens": len(words),
                     "total_tokens": _count(prompt) + len(words)}  # fmt: skip
            output = [{"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
                       "content": [{"type": "output_text", "text": text, "annotations": []}]}]  # fmt: skip
            response = {"id": f"resp_{uuid.uuid4().hex}", "object": "response", "model": model_name,
                        "created_at": int(time.time()), "status": "completed", "output": output,
                        "usage": usage}  # fmt: skip
            if not request.get("stream"):
                self._json(200, response)
                return
            self.send_response(200)
            self.send_header("content-type", "text/event-stream; charset=utf-8")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            events = [("response.created", {"response": {**response, "status": "in_progress", "output": [],
                                                         "usage": None}})]  # fmt: skip
            where = {"item_id": "msg_1", "output_index": 0, "content_index": 0}
            events += [("response.output_text.delta", {**where, "delta": (" " if i else "") + w})
                       for i, w in enumerate(words)]  # fmt: skip
            events.append(("response.completed", {"response": response}))
            for n, (kind, data) in enumerate(events):
                body = json.dumps({"type": kind, "sequence_number": n, **data}, separators=(",", ":"))
                self._chunk(f"event: {kind}\ndata: {body}\n\n")
            self._chunk("")

        def _stream(self, head: dict[str, Any], words: list[str], finish: str, usage: Any) -> None:
            self.send_response(200)
            self.send_header("content-type", "text/event-stream; charset=utf-8")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            chunk = {**head, "object": "chat.completion.chunk"}
            events = [
                {
                    **chunk,
                    "choices": [
                        {
                            "index": 0,
                            "delta": {"role": "assistant", "content": ""},
                            "logprobs": None,
                            "finish_reason": None,
                        }
                    ],
                }
            ]
            for i, word in enumerate(words):
                last = i == len(words) - 1
                events.append(
                    {
                        **chunk,
                        "choices": [
                            {
                                "index": 0,
                                "delta": {"content": (" " if i else "") + word},
                                "logprobs": None,
                                "finish_reason": finish if last else None,
                                **({"stop_reason": None} if last else {}),
                            }
                        ],
                    }
                )
            if usage is not None:
                events.append({**chunk, "choices": [], "usage": usage})
            first = token_delay if first_token_delay is None else first_token_delay
            for i, event in enumerate(events):
                step = first if i == 1 else token_delay
                if step and 0 < i <= len(words):  # the role chunk goes at once, each word after a step
                    time.sleep(step)
                if i == 2:  # the role chunk and the first word are out
                    release.wait()
                text = f"data: {json.dumps(event, ensure_ascii=False, separators=(',', ':'))}\n\n"
                if split_events:  # each event in two writes, split inside its JSON, a moment apart
                    self._chunk(text[: len(text) // 2])
                    time.sleep(0.005)
                    text = text[len(text) // 2 :]
                self._chunk(text)
            self._chunk("data: [DONE]\n\n")
            self._chunk("")

        def _chunk(self, text: str) -> None:
            data = text.encode()
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

    return Handler


def serve_chat(name: str, port: int, **options: Any) -> None:
    """`options`: those of `chat_handler`."""
    handler = chat_handler(name, BigramChat(zen_words()), **options)
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    print(f"chat stand-in {name!r} on 127.0.0.1:{port}", flush=True)
    server.serve_forever()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="kind", required=True)
    iris = sub.add_parser("iris", help="the iris classifier on KServe's ModelServer")
    iris.add_argument("--model", default="iris-classifier")
    iris.add_argument("--version", default="v1", choices=sorted(IRIS_ALGORITHMS))
    iris.add_argument("--http-port", type=int, required=True)
    iris.add_argument("--grpc-port", type=int, required=True)
    chat = sub.add_parser("chat", help="the OpenAI-compatible stand-in")
    chat.add_argument("--model", default="zen-chat")
    chat.add_argument("--port", type=int, required=True)
    chat.add_argument("--token-delay", type=float, default=0.0, metavar="SECONDS",
                      help="pause before each streamed word, as a model's decode step (default 0)")
    chat.add_argument("--first-token-delay", type=float, default=None, metavar="SECONDS",
                      help="pause before the first word instead, a model's prefill (default: --token-delay)")
    chat.add_argument("--hold-streams", action="store_true",
                      help="stop every stream after its first word until POST /_release")
    chat.add_argument("--split-events", action="store_true",
                      help="write each SSE event in two parts, a moment apart (an event split across reads)")
    chat.add_argument("--json-content-type", default="application/json", metavar="TYPE",
                      help="content-type of JSON answers (llama.cpp: 'application/json; charset=utf-8')")
    chat.add_argument("--no-stream-usage", dest="stream_usage", action="store_false",
                      help="never end a stream with usage (llama-cpp-python's server ignores stream_options)")
    args = parser.parse_args(argv)
    if args.kind == "iris":
        serve_iris(args.model, args.version, args.http_port, args.grpc_port)
    else:
        serve_chat(args.model, args.port, token_delay=args.token_delay,
                   first_token_delay=args.first_token_delay, hold_streams=args.hold_streams,
                   split_events=args.split_events, json_type=args.json_content_type,
                   stream_usage=args.stream_usage)  # fmt: skip


if __name__ == "__main__":
    main()
