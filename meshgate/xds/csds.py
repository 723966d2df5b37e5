"""Client status discovery (envoy.service.status.v3): what each connected proxy holds, per resource.

ACKED: the proxy ACKed this version. REQUESTED: sent, no answer yet. NACKED: the proxy's last answer
for the type was a NACK (error_state carries its message); it keeps the ACKED versions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from envoy.admin.v3 import config_dump_shared_pb2 as shared
from envoy.config.core.v3 import base_pb2
from envoy.service.status.v3 import csds_pb2

from ._stream import TypeState
from ._wire import Malformed, abort_malformed, parse, parsed, register
from .status import StatusBoard

__all__ = ["CSDS_SERVICE", "ClientStatus", "client_status"]

CSDS_SERVICE = "envoy.service.status.v3.ClientStatusDiscoveryService"


def client_status(board: StatusBoard, request: csds_pb2.ClientStatusRequest) -> csds_pb2.ClientStatusResponse:
    wanted = {m.node_id.exact for m in request.node_matchers if m.node_id.exact}
    if request.node.id:
        wanted.add(request.node.id)
    response = csds_pb2.ClientStatusResponse()
    for status in board.streams():
        if (wanted and status.node not in wanted) or status.stream is None:
            continue
        config = response.config.add(node=base_pb2.Node(id=status.node))
        for state in status.stream.types.values():
            config.generic_xds_configs.extend(_entries(state, contents=not request.exclude_resource_contents))
    return response


def _entries(st: TypeState, *, contents: bool) -> list[csds_pb2.ClientConfig.GenericXdsConfig]:
    out = []
    for name, version in sorted(st.sent.items()):
        acked = st.acked.get(name) == version
        entry = csds_pb2.ClientConfig.GenericXdsConfig(
            type_url=st.type_url,
            name=name,
            version_info=version,
            client_status=shared.ACKED if acked else shared.REQUESTED,
            config_status=csds_pb2.SYNCED if acked else csds_pb2.NOT_SENT,
        )
        held = st.held.get(name)
        if contents and held is not None:
            entry.xds_config.CopyFrom(held.packed)
        out.append(entry)
    if st.error:
        failed = csds_pb2.ClientConfig.GenericXdsConfig(
            type_url=st.type_url, client_status=shared.NACKED, config_status=csds_pb2.ERROR
        )
        failed.error_state.details = st.error
        out.append(failed)
    return out


class ClientStatus:
    """ClientStatusDiscoveryService over request bytes: a malformed request is INVALID_ARGUMENT.
    (`client_status` is the same answer for in-process callers.)"""

    def __init__(self, board: StatusBoard) -> None:
        self._board = board

    def add_to_server(self, server: grpc.aio.Server) -> None:
        serialize = csds_pb2.ClientStatusResponse.SerializeToString
        register(server, CSDS_SERVICE, {
            "FetchClientStatus": grpc.unary_unary_rpc_method_handler(
                self.FetchClientStatus, response_serializer=serialize
            ),
            "StreamClientStatus": grpc.stream_stream_rpc_method_handler(
                self.StreamClientStatus, response_serializer=serialize
            ),
        })  # fmt: skip

    async def FetchClientStatus(
        self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> csds_pb2.ClientStatusResponse:
        try:
            request = parse(csds_pb2.ClientStatusRequest, raw)
        except Malformed as exc:
            await abort_malformed(context, "FetchClientStatus", exc)
        return client_status(self._board, request)

    async def StreamClientStatus(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[csds_pb2.ClientStatusResponse]:
        try:
            async for request in parsed(csds_pb2.ClientStatusRequest, requests):
                yield client_status(self._board, request)
        except Malformed as exc:
            await abort_malformed(context, "StreamClientStatus", exc)
