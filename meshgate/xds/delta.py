"""Incremental (delta) ADS: responses carry only changed resources and the names removed."""

from __future__ import annotations

from envoy.service.discovery.v3 import discovery_pb2

from ._stream import Step, Stream

__all__ = ["DeltaHandler"]


class DeltaHandler:
    protocol = "delta"

    def node_of(self, request: discovery_pb2.DeltaDiscoveryRequest) -> str:
        return str(request.node.id) or "unknown"

    def on_request(self, stream: Stream, request: discovery_pb2.DeltaDiscoveryRequest) -> None:
        st = stream.state(request.type_url)
        first = not st.requested
        st.requested = True
        if first:  # a reconnecting Envoy says what it still has: send only what differs
            st.sent.update(request.initial_resource_versions)
            st.acked.update(request.initial_resource_versions)
        error = request.error_detail.message or "rejected" if request.HasField("error_detail") else None
        stream.answer(request.type_url, request.response_nonce, error)
        st.change(set(request.resource_names_subscribe), set(request.resource_names_unsubscribe), first=first)

    def response(self, step: Step) -> discovery_pb2.DeltaDiscoveryResponse:
        return discovery_pb2.DeltaDiscoveryResponse(
            system_version_info=step.version,
            type_url=step.type_url,
            nonce=step.nonce,
            resources=[
                discovery_pb2.Resource(name=r.name, version=r.version, resource=r.packed)
                for r in step.changed
            ],
            removed_resources=step.removed,
        )

    def payload_bytes(self, step: Step) -> int:
        """Serialized resource bytes in the response: only the changed resources."""
        return sum(r.size for r in step.changed)
