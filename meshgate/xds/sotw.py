"""State-of-the-world ADS: every response carries the full set of resources of its type."""

from __future__ import annotations

from envoy.service.discovery.v3 import discovery_pb2

from ._stream import Step, Stream

__all__ = ["SotwHandler"]


class SotwHandler:
    protocol = "sotw"

    def node_of(self, request: discovery_pb2.DiscoveryRequest) -> str:
        return str(request.node.id) or "unknown"

    def on_request(self, stream: Stream, request: discovery_pb2.DiscoveryRequest) -> None:
        st = stream.state(request.type_url)
        first = not st.requested
        st.requested = True
        error = request.error_detail.message or "rejected" if request.HasField("error_detail") else None
        stream.answer(request.type_url, request.response_nonce, error)
        st.subscribe(set(request.resource_names), first=first)

    def response(self, step: Step) -> discovery_pb2.DiscoveryResponse:
        return discovery_pb2.DiscoveryResponse(
            version_info=step.version,
            type_url=step.type_url,
            nonce=step.nonce,
            resources=[r.packed for r in step.view.values()],
        )

    def payload_bytes(self, step: Step) -> int:
        """Serialized resource bytes in the response: every resource of the view."""
        return sum(r.size for r in step.view.values())
