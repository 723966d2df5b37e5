"""A model served over REST and gRPC under one name (`protocols: [v2-rest, v2-grpc]`): what the policy
accepts, which clusters, routes and probes it compiles to."""

from __future__ import annotations

from typing import Any

import pytest

from meshgate.models import probe_targets
from meshgate.policy import PolicyError
from meshgate.xds import compile_snapshot
from meshgate.xds._types import CLUSTER, ENDPOINT
from tests.unit.test_xds_compile import routes
from tests.unit.test_xds_support import model, policy


def dual(**extra: Any) -> dict[str, Any]:
    doc = model("m", {"v1": 90, "v2": 10}, protocols=["v2-grpc", "v2-rest"], **extra)
    for i, version in enumerate(doc["versions"]):
        version["grpc_endpoints"] = [f"127.0.0.1:{9500 + i}"]
    return doc


def test_protocols_read_rest_first_and_need_grpc_addresses() -> None:
    found = policy(dual()).models[0]
    assert (found.protocol, found.protocols, found.served_protocols) == (
        "v2-rest",
        ("v2-rest", "v2-grpc"),
        ("v2-rest", "v2-grpc"),
    )
    no_grpc = dual()
    del no_grpc["versions"][1]["grpc_endpoints"]
    stray = model("s", {"v1": 100})
    stray["versions"][0]["grpc_endpoints"] = ["127.0.0.1:1"]
    both_grpc = {**dual(), "protocol": "v2-grpc"}
    same_port = model("k", {"v1": 100}, protocols=["v2-rest", "v2-grpc"])
    same_port["versions"][0] = {"name": "v1", "kserve": {"service": "k", "port": 9000, "grpc_port": 9000}}
    for doc, message in (
        (no_grpc, "versions ['v2'] need grpc_endpoints"),
        (stray, "grpc_endpoints are for a model with protocols"),
        (both_grpc, "with protocols, protocol is v2-rest"),
        (model("o", {"v1": 100}, protocols=["v2-rest", "openai"]), "protocols"),
        (same_port, "kserve port and grpc_port must differ"),
    ):
        with pytest.raises(PolicyError) as caught:
            policy(doc)
        assert message in str(caught.value)


def test_each_protocol_has_its_clusters_grpc_over_http2() -> None:
    snapshot = compile_snapshot(policy(dual()))
    clusters = snapshot[CLUSTER]
    assert {"model|m|v1", "model|m|v2", "model|m|v1|grpc", "model|m|v2|grpc"} <= set(clusters)
    http2 = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    assert http2 in clusters["model|m|v1|grpc"].message.typed_extension_protocol_options
    assert http2 not in clusters["model|m|v1"].message.typed_extension_protocol_options
    grpc_v1 = snapshot[ENDPOINT]["model|m|v1|grpc"].message
    own = grpc_v1.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value
    failover = grpc_v1.endpoints[1].lb_endpoints[0].endpoint.address.socket_address.port_value
    assert (own, failover) == (9500, 9501)  # its own gRPC address; v2's gRPC address at priority 1


def test_grpc_routes_come_first_and_match_only_grpc_requests() -> None:
    table = [(r.name, {h.name for h in r.match.headers}) for r in routes(compile_snapshot(policy(dual())))]
    names = [name for name, _ in table]
    assert names.index("m|grpc|canary") < names.index("m|canary")
    for name, headers in table:
        if name.startswith("m|grpc|"):
            assert "content-type" in headers, name  # application/grpc: REST keeps its own routes
    canary = next(r for r in routes(compile_snapshot(policy(dual()))) if r.name == "m|grpc|canary")
    assert [c.name for c in canary.route.weighted_clusters.clusters] == ["model|m|v1|grpc", "model|m|v2|grpc"]
    assert canary.route.max_stream_duration.HasField("grpc_timeout_header_max")


def test_every_address_is_probed_with_its_protocol() -> None:
    targets = probe_targets(policy(dual()))
    assert sorted((k.version, k.endpoint, t.protocol) for k, t in targets.items()) == [
        ("v1", "127.0.0.1:9000", "v2-rest"),
        ("v1", "127.0.0.1:9500", "v2-grpc"),
        ("v2", "127.0.0.1:9001", "v2-rest"),
        ("v2", "127.0.0.1:9501", "v2-grpc"),
    ]
