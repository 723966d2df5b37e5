"""Routes for the inference protocol's server-level calls, which name no model (docs/models.md).

tritonclient's `is_server_live()`, `is_server_ready()` and `get_server_metadata()` ask "the server";
behind the gateway are many, so the gateway answers for itself (`meshgate.models.server_api`):

- REST, with a v2-rest model: `GET /v2/health/live` and `/v2/health/ready` are 200 (the gateway routes),
  `GET /v2` its metadata as JSON; Envoy's direct responses.
- gRPC, with a v2-grpc model: `ServerLive`, `ServerReady`, `ServerMetadata` go to cluster
  `meshgate|server`, meshgate's extauthz port, where `ServerApi` answers (a gRPC success needs trailers,
  which a direct response cannot send).

ext_authz checks them like any request (kind `server`: a valid credential, no model), unless the
policy's `gateway.public_server_api` names them: then the route disables ext_authz.
"""

from __future__ import annotations

import json

from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2

from meshgate.models.server_api import SERVER_METADATA
from meshgate.policy.model import Policy

from ._bodies import EXTAUTHZ_FILTER, GRPC_PREFIX, json_type
from ._native import disable_on
from ._pb import duration, pack

__all__ = ["SERVER_CLUSTER", "server_routes", "serves"]

SERVER_CLUSTER = "meshgate|server"
_REST = {"live": "/v2/health/live", "ready": "/v2/health/ready", "metadata": "/v2"}
_GRPC = {"live": "ServerLive", "ready": "ServerReady", "metadata": "ServerMetadata"}


def serves(policy: Policy, protocol: str) -> bool:
    return any(m.serves(protocol) for m in policy.models)


def server_routes(policy: Policy, *, extauthz: bool) -> list[rc.Route]:
    public = set(policy.gateway.public_server_api)
    routes = []
    if serves(policy, "v2-rest"):
        for call, path in _REST.items():
            body = json.dumps(SERVER_METADATA, separators=(",", ":")).encode() if call == "metadata" else b""
            route = rc.Route(
                name=f"meshgate|server|{call}",
                match=rc.RouteMatch(path=path),
                direct_response=rc.DirectResponseAction(status=200),
            )
            if body:
                route.direct_response.body.inline_bytes = body
                route.response_headers_to_add.append(json_type())
            routes.append(route)
    if serves(policy, "v2-grpc"):
        for call, method in _GRPC.items():
            action = rc.RouteAction(cluster=SERVER_CLUSTER, timeout=duration(5.0))
            match = rc.RouteMatch(path=GRPC_PREFIX + method)
            routes.append(rc.Route(name=f"meshgate|server|grpc-{call}", match=match, route=action))
    native = policy.gateway.enforcement != "ext_authz"
    for route in routes if extauthz or native else ():
        call = route.name.rsplit("|", 1)[1].removeprefix("grpc-")
        if call in public:
            route.typed_per_filter_config[EXTAUTHZ_FILTER].CopyFrom(
                pack(ext_authz_pb2.ExtAuthzPerRoute(disabled=True))
            )
            if native:
                disable_on(route)
    return routes
