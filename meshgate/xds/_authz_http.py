"""ext_authz over HTTP (`gateway.ext_authz.transport: http`): the filter's `http_service`, its cluster,
and the routes of the answers extauthz gives itself (meshgate/extauthz/http.py has the server side).

Envoy's HTTP authorization client (Envoy's `source/extensions/filters/common/ext_authz/
ext_authz_http_impl.cc`; docs: "External Authorization", `HttpService`):
- sends the client's method, path and the headers `allowed_headers` matches (here: all of them, as the
  gRPC CheckRequest carries them all), with the buffered body;
- reads 200 as OK: sets upstream the answer's headers `allowed_upstream_headers` matches (the identity
  headers, overwritten), removes those named in `x-envoy-auth-headers-to-remove`, and stores the headers
  `dynamic_metadata_from_headers` matches in its dynamic metadata (contract.HTTP_METADATA_PREFIX);
- any other status is a denial sent to the client with the answer's body and the headers
  `allowed_client_headers` matches; a 5xx or no answer is an error (`failure_mode_allow`).

OpenAI's model list (`GET /v1/models`), which extauthz answers with a 200 of its own, cannot be a
"denial" over HTTP: its paths are routed to the same server as their upstream, with ext_authz (and, in
`auto`, the native decision) off on them; the server decides them as it decides a Check, and its answer
(the list, or the 401/404) goes to the client as it is.
"""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import http_uri_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2
from envoy.type.matcher.v3 import string_pb2

from meshgate import contract
from meshgate.policy.model import GatewaySettings, Policy
from meshgate.ratelimit.admission import REFUSAL_HEADERS
from meshgate.ratelimit.decision import HEADER_NAMES, POLICY_HEADER

from ._bodies import EXTAUTHZ_FILTER
from ._clusters import service_cluster
from ._native import disable_on
from ._pb import duration, pack
from .options import CompileOptions

__all__ = ["HTTP_CLUSTER", "http_cluster", "http_service", "model_list_routes", "uses_http"]

HTTP_CLUSTER = "meshgate|extauthz-http"
UPSTREAM_HEADERS = (
    *contract.IDENTITY_HEADERS.values(),
    contract.VERSION_HEADER,
    contract.DECISION_ID_HEADER,
)
"""What an allowed Check sets upstream (responses.to_response, add_decision_id): nothing else of the
answer reaches the model (the metadata headers stay in Envoy)."""
RATE_LIMIT_HEADERS = tuple(
    dict.fromkeys(name.lower() for names in HEADER_NAMES.values() for name in (*names, POLICY_HEADER))
)
"""The rate limit headers of the token admission in the Check (meshgate/ratelimit/admission.py), on an
allowed request's answer (`allowed_client_headers_on_success`) and on its 429."""
CLIENT_HEADERS = (
    "content-type",
    "www-authenticate",
    contract.DECISION_ID_HEADER,
    *RATE_LIMIT_HEADERS,
    *REFUSAL_HEADERS,
)
"""What a denial sends the client besides its status and body (responses.deny, add_decision_id, the
admission's 429)."""


def uses_http(policy: Policy) -> bool:
    return policy.gateway.ext_authz.transport == "http" and policy.gateway.enforcement != "native"


def _exact(*names: str) -> list[string_pb2.StringMatcher]:
    return [string_pb2.StringMatcher(exact=name) for name in names]


def http_service(gateway: GatewaySettings, options: CompileOptions) -> ext_authz_pb2.ExtAuthz:
    """The ext_authz filter's config calling meshgate extauthz over HTTP (the caller sets the rest)."""
    response = ext_authz_pb2.AuthorizationResponse()
    response.allowed_upstream_headers.patterns.extend(_exact(*UPSTREAM_HEADERS))
    response.allowed_client_headers.patterns.extend(_exact(*CLIENT_HEADERS))
    response.allowed_client_headers_on_success.patterns.extend(_exact(*RATE_LIMIT_HEADERS))
    response.dynamic_metadata_from_headers.patterns.add(prefix=contract.HTTP_METADATA_PREFIX)
    service = ext_authz_pb2.HttpService(
        server_uri=http_uri_pb2.HttpUri(
            uri=f"http://{options.extauthz_http}",
            cluster=HTTP_CLUSTER,
            timeout=duration(gateway.ext_authz.timeout),
        ),
        authorization_response=response,
    )
    config = ext_authz_pb2.ExtAuthz(http_service=service)
    config.allowed_headers.patterns.add(safe_regex={"regex": ".*"})  # every header, as over gRPC
    return config


def http_cluster(options: CompileOptions) -> cluster_pb2.Cluster:
    """meshgate extauthz's HTTP port: HTTP/1.1, Envoy keeps its connections open between checks."""
    return service_cluster(HTTP_CLUSTER, options.extauthz_http, options, http2=False)


def model_list_routes(policy: Policy) -> list[rc.Route]:
    """OpenAI's model list paths, answered by meshgate extauthz's HTTP server as their upstream."""
    routes = []
    timeout = duration(policy.gateway.ext_authz.timeout)
    for path in contract.MODEL_LISTS:
        for match in (rc.RouteMatch(path=path), rc.RouteMatch(prefix=path + "/")):
            route = rc.Route(
                name=f"meshgate|models|{match.path or match.prefix}",
                match=match,
                route=rc.RouteAction(cluster=HTTP_CLUSTER, timeout=timeout),
            )
            route.typed_per_filter_config[EXTAUTHZ_FILTER].CopyFrom(
                pack(ext_authz_pb2.ExtAuthzPerRoute(disabled=True))
            )
            if policy.gateway.enforcement != "ext_authz":
                disable_on(route)
            routes.append(route)
    return routes
