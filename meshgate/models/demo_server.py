"""A tiny deterministic KServe model for e2e tests and the local quickstart.

Run it as::

    python -m meshgate.models.demo_server --model-name demo --model-version 2 \\
        --http-port 8080 --grpc-port 8081

It serves the Open Inference Protocol v2 over REST and gRPC (KServe's ModelServer does both), plus
Triton's gRPC ``ModelStreamInfer``, which KServe lacks (``add_stream_infer``). For an
INT32 / INT64 / FP32 / FP64 tensor ``INPUT0`` it returns ``OUTPUT0 = INPUT0 * 2 + version_offset(version)``
with the same datatype and shape, so a test can tell from the numbers alone which version answered. The
response also carries ``model_version`` and the parameter ``meshgate_model_version``; REST responses add
the header ``x-demo-model-version``. Request headers starting with ``x-meshgate-`` are echoed back as
response parameters ``echo.<header>`` so e2e tests can see what ext_authz injected upstream.

kserve is imported only inside ``build_model`` / ``main``: importing this module costs nothing and never
touches protobuf's descriptor pool (kserve and tritonclient.grpc cannot share one process).
"""

from __future__ import annotations

import argparse
import sys
import uuid
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

from meshgate import contract

__all__ = [
    "ECHO_HEADER_PREFIX",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "build_model",
    "echoed_parameters",
    "main",
    "version_offset",
]

INPUT_NAME = "INPUT0"
OUTPUT_NAME = "OUTPUT0"
ECHO_HEADER_PREFIX = contract.HEADER_PREFIX
_SUPPORTED_DATATYPES = frozenset({"INT32", "INT64", "FP32", "FP64"})


def version_offset(version: str) -> int:
    """The per-version constant added to every output element.

    ``"1"`` or ``"v1"`` -> 100, ``"2"`` -> 200, ...; any other string -> a stable value in [1000, 2000).
    """
    digits = version[1:] if version[:1] in ("v", "V") else version
    if digits.isdigit():
        return 100 * int(digits)
    return 1000 + zlib.crc32(version.encode()) % 1000


def echoed_parameters(headers: Mapping[str, str] | None) -> dict[str, str]:
    """Response parameters that echo the request's ``x-meshgate-*`` headers."""
    if not headers:
        return {}
    return {
        f"echo.{name.lower()}": value
        for name, value in headers.items()
        if name.lower().startswith(ECHO_HEADER_PREFIX)
    }


def build_model(name: str, version: str) -> Any:
    """Construct the (loaded, ready) kserve Model. Imports kserve."""
    import kserve  # local import: see the module docstring
    from kserve.errors import InvalidInput

    offset = version_offset(version)

    class DemoModel(kserve.Model):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__(name, return_response_headers=True)
            self.ready = True

        def load(self) -> bool:
            self.ready = True
            return True

        def get_input_types(self) -> list[dict[str, Any]]:
            return [{"name": INPUT_NAME, "datatype": "INT32", "shape": [-1, -1]}]

        def get_output_types(self) -> list[dict[str, Any]]:
            return [{"name": OUTPUT_NAME, "datatype": "INT32", "shape": [-1, -1]}]

        async def predict(
            self,
            payload: Any,
            headers: dict[str, str] | None = None,
            response_headers: dict[str, str] | None = None,
        ) -> Any:
            tensor = payload.get_input_by_name(INPUT_NAME)
            if tensor is None:
                raise InvalidInput(f"model {name!r} expects an input named {INPUT_NAME}")
            if tensor.datatype not in _SUPPORTED_DATATYPES:
                raise InvalidInput(
                    f"{INPUT_NAME} datatype {tensor.datatype} not in {sorted(_SUPPORTED_DATATYPES)}"
                )
            data = tensor.as_numpy()
            result = (data * 2 + offset).astype(data.dtype)
            output = kserve.InferOutput(OUTPUT_NAME, list(result.shape), tensor.datatype)
            # As a list, not an ndarray: kserve 0.21's InferResponse.to_grpc tests `if output.data` and
            # raises "truth value of an array is ambiguous" for an ndarray when outputs are raw (gRPC).
            output.set_data_from_numpy(result, binary_data=False)
            if response_headers is not None:
                response_headers["x-demo-model-version"] = version
            return kserve.InferResponse(
                response_id=payload.id or str(uuid.uuid4()),
                model_name=name,
                model_version=version,
                infer_outputs=[output],
                parameters={"meshgate_model_version": version, **echoed_parameters(headers)},
                use_binary_outputs=payload.use_binary_outputs,
                requested_outputs=payload.request_outputs,
            )

    return DemoModel()


def _frame_field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field (tag, varint length, bytes)."""
    out, size = bytearray([number << 3 | 2]), len(payload)
    while True:
        byte, size = size & 0x7F, size >> 7
        out.append(byte | (0x80 if size else 0))
        if not size:
            return bytes(out) + payload


def add_stream_infer() -> None:
    """Give KServe's gRPC server Triton's `ModelStreamInfer`, which KServe 0.21 does not serve: each
    ModelInferRequest of the stream is answered like ModelInfer, as a ModelStreamInferResponse
    (`infer_response`, field 2; `error_message`, field 1, when it fails). Patches the function KServe's
    GRPCServer calls to register its servicer; call it before ModelServer.start. Imports kserve."""
    import grpc
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as generated

    register = generated.add_GRPCInferenceServiceServicer_to_server

    def register_with_stream(servicer: Any, server: Any) -> None:
        register(servicer, server)

        async def stream(requests: Any, context: Any) -> Any:
            async for raw in requests:
                try:
                    answer = await servicer.ModelInfer(pb.ModelInferRequest.FromString(raw), context)
                    yield _frame_field(2, answer.SerializeToString())
                except Exception as exc:  # Triton reports a failed request in the stream, not by ending it
                    yield _frame_field(1, str(exc).encode())

        handler = grpc.stream_stream_rpc_method_handler(stream)
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "inference.GRPCInferenceService", {"ModelStreamInfer": handler}
                ),
            )
        )

    generated.add_GRPCInferenceServiceServicer_to_server = register_with_stream


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m meshgate.models.demo_server", description=__doc__)
    parser.add_argument("--model-name", default="demo")
    parser.add_argument("--model-version", default="1")
    parser.add_argument("--http-port", type=int, default=8080)
    parser.add_argument("--grpc-port", type=int, default=8081)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse_args(argv)
    # kserve parses sys.argv (parse_known_args) when kserve.model_server is imported: hide ours from it.
    sys.argv = sys.argv[:1]
    import kserve

    add_stream_infer()
    model = build_model(args.model_name, args.model_version)
    server = kserve.ModelServer(
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        workers=1,
        enable_latency_logging=False,
        grace_period=2,
    )
    server.start([model])


if __name__ == "__main__":
    main()
