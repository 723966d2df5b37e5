"""Server-level calls (no model) at the gateway: which routes answer them, which need a credential."""

from __future__ import annotations

import json
from typing import Any

import pytest
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2

from meshgate.policy import PolicyError
from meshgate.xds import CompileOptions, compile_snapshot
from meshgate.xds._types import CLUSTER
from tests.unit.test_xds_compile import routes
from tests.unit.test_xds_support import model, policy


def _server_routes(**gateway: object) -> dict[str, Any]:
    p = policy(
        model("rest", {"v1": 100}),
        model("grpc", {"v1": 100}, protocol="v2-grpc", port=9100),
        gateway={"port": 8080, **gateway},
    )
    return {r.name: r for r in routes(compile_snapshot(p)) if r.name.startswith("meshgate|server|")}


def test_rest_calls_are_answered_by_envoy_grpc_calls_go_to_meshgate() -> None:
    found = _server_routes()
    assert {name: r.match.path for name, r in found.items()} == {
        "meshgate|server|live": "/v2/health/live",
        "meshgate|server|ready": "/v2/health/ready",
        "meshgate|server|metadata": "/v2",
        "meshgate|server|grpc-live": "/inference.GRPCInferenceService/ServerLive",
        "meshgate|server|grpc-ready": "/inference.GRPCInferenceService/ServerReady",
        "meshgate|server|grpc-metadata": "/inference.GRPCInferenceService/ServerMetadata",
    }
    metadata = found["meshgate|server|metadata"].direct_response
    assert json.loads(metadata.body.inline_bytes)["name"] == "meshgate"
    assert found["meshgate|server|grpc-ready"].route.cluster == "meshgate|server"


def test_by_default_every_server_call_needs_a_credential() -> None:
    for route in _server_routes().values():
        assert "envoy.filters.http.ext_authz" not in route.typed_per_filter_config


def test_public_server_api_disables_ext_authz_on_what_it_names() -> None:
    disabled = set()
    for name, route in _server_routes(public_server_api=["live", "ready"]).items():
        config = route.typed_per_filter_config.get("envoy.filters.http.ext_authz")
        if config is not None:
            per_route = ext_authz_pb2.ExtAuthzPerRoute()
            assert config.Unpack(per_route) and per_route.disabled
            disabled.add(name)
    assert disabled == {
        "meshgate|server|live",
        "meshgate|server|ready",
        "meshgate|server|grpc-live",
        "meshgate|server|grpc-ready",
    }


def test_public_server_api_names_only_known_calls() -> None:
    with pytest.raises(PolicyError) as caught:
        policy(model("rest", {"v1": 100}), gateway={"port": 8080, "public_server_api": ["models"]})
    assert "public_server_api" in str(caught.value)


def test_the_server_cluster_is_meshgates_extauthz_address_with_grpc_models_only() -> None:
    options = CompileOptions(extauthz="10.0.0.5:9001")
    with_grpc = compile_snapshot(policy(model("g", {"v1": 100}, protocol="v2-grpc")), options)
    address = with_grpc[CLUSTER]["meshgate|server"].message.load_assignment.endpoints[0].lb_endpoints[0]
    assert address.endpoint.address.socket_address.port_value == 9001
    assert "meshgate|server" not in compile_snapshot(policy(model("r", {"v1": 100})), options)[CLUSTER]
