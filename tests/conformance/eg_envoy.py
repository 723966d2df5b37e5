"""The Envoy configuration Envoy Gateway would give its proxy for meshgate's rendering, built here from
the rendered objects so that a real Envoy can run it (no control plane runs in CI).

Translated the way Envoy Gateway v1.9 does (envoyproxy/gateway internal/gatewayapi, internal/xds/translator):
- ClientTrafficPolicy headers.earlyRequestHeaders.remove -> the HTTP connection manager's
  early_header_mutation_extensions (listener.go buildEarlyHeaderMutation; testdata
  out/xds-ir/http-early-header-mutation.listeners.yaml);
- the Gateway's SecurityPolicy extAuth -> an ext_authz filter named
  `envoy.filters.http.ext_authz/securitypolicy/<ns>/<name>`, disabled on the listener and enabled by an
  ExtAuthzPerRoute on each route the policy covers (extauth.go patchHCM/patchRoute; testdata
  out/xds-ir/ext-auth-body.listeners.yaml): recomputeRoute -> clear_route_cache, bodyToExtAuth ->
  with_request_body {max_request_bytes} only (no pack_as_bytes: the body goes in the `body` string);
- HTTPRoute / GRPCRoute rules, one route per match, only from namespaces the listener allows: PathPrefix
  `/` -> prefix `/`, other prefixes -> path_separated_prefix, a GRPCRoute service match -> the prefix
  `/<service>` (route.go processGRPCRouteMethodExact), Exact headers; sorted as sort.go does (match type
  Exact > RegularExpression > PathPrefix, then path length, then header matches, then exact header
  matches, descending, stable); an HTTPRouteFilter directResponse -> direct_response with content-type;
  weighted backendRefs -> clusters (GRPCRoute backends over HTTP/2).
Not translated: AIGatewayRoute (Envoy AI Gateway's external processor cannot run here), the
BackendTrafficPolicy (it runs in Envoy Gateway's own rate limit service), timeouts and mirrors.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tests.harness import bootstraps as b

__all__ = ["eg_bootstrap"]

Obj = dict[str, Any]
_T = "type.googleapis.com/"
_HCM = "envoy.filters.network.http_connection_manager"


def _kind(objs: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind]


def _allowed_namespaces(gateway: Obj) -> set[str] | None:
    (listener, *_) = gateway["spec"]["listeners"]
    namespaces = listener["allowedRoutes"]["namespaces"]
    if namespaces["from"] == "All":
        return None
    assert namespaces["from"] == "Selector"
    (expression,) = namespaces["selector"]["matchExpressions"]
    assert expression["key"] == "kubernetes.io/metadata.name" and expression["operator"] == "In"
    return set(expression["values"])


def _ext_authz(policy: Obj, meshgate: Mapping[int, int]) -> tuple[Obj, Obj]:
    meta, ext = policy["metadata"], policy["spec"]["extAuth"]
    known = {"grpc", "failOpen", "timeout", "bodyToExtAuth", "recomputeRoute"}
    assert set(ext) <= known, f"extAuth fields not translated: {set(ext) - known}"
    (ref,) = ext["grpc"]["backendRefs"]
    name = f"envoy.filters.http.ext_authz/securitypolicy/{meta['namespace']}/{meta['name']}"
    cluster = f"securitypolicy/{meta['namespace']}/{meta['name']}/{ref['namespace']}/{ref['name']}"
    config: Obj = {
        "@type": _T + "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
        "grpc_service": {"envoy_grpc": {"cluster_name": cluster, "authority": ref["name"]}, "timeout": "10s"},
        "transport_api_version": "V3",
        "failure_mode_allow": ext.get("failOpen", False),
        "clear_route_cache": ext.get("recomputeRoute", False),
    }
    if "bodyToExtAuth" in ext:
        config["with_request_body"] = {"max_request_bytes": ext["bodyToExtAuth"]["maxRequestBytes"]}
    filter_ = {"name": name, "disabled": True, "typed_config": config}
    return filter_, b.static_cluster(cluster, "127.0.0.1", meshgate[ref["port"]], http2=True)


def _match(match: Mapping[str, Any], grpc: bool) -> tuple[Obj, tuple[int, int, int, int]]:
    out: Obj = {"prefix": "/"}
    kind, length = 0, 1
    if grpc and "method" in match:
        method = match["method"]
        assert set(method) == {"type", "service"} and method["type"] == "Exact", method
        out = {"path_separated_prefix": f"/{method['service']}"}
        length = len(out["path_separated_prefix"])
    elif "path" in match:
        path = match["path"]
        assert path["type"] == "PathPrefix", path
        value = path["value"].rstrip("/") or "/"
        out = {"prefix": "/"} if value == "/" else {"path_separated_prefix": value}
        length = len(value)
    headers = []
    for header in match.get("headers", []):
        assert header.get("type", "Exact") == "Exact", header
        headers.append({"name": header["name"], "string_match": {"exact": header["value"]}})
    if headers:
        out["headers"] = headers
    return out, (kind, length, len(headers), len(headers))


def _routes(
    objs: list[Obj], authz: str, upstreams: Mapping[tuple[str, str], int]
) -> tuple[list[Obj], list[Obj]]:
    allowed = _allowed_namespaces(_kind(objs, "Gateway")[0])
    filters = {(f["metadata"]["namespace"], f["metadata"]["name"]): f for f in _kind(objs, "HTTPRouteFilter")}
    keyed: list[tuple[tuple[int, int, int, int], Obj]] = []
    clusters: dict[str, Obj] = {}
    for route in _kind(objs, "HTTPRoute") + _kind(objs, "GRPCRoute"):
        ns, grpc = route["metadata"]["namespace"], route["kind"] == "GRPCRoute"
        if allowed is not None and ns not in allowed:
            continue
        for r, rule in enumerate(route["spec"]["rules"]):
            action = _action(route, r, rule, filters, upstreams, clusters, grpc)
            for m, match in enumerate(rule.get("matches") or [{}]):
                envoy_match, key = _match(match, grpc)
                enable = {
                    authz: {
                        "@type": _T + "envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
                        "check_settings": {},
                    }
                }
                name = f"{route['kind'].lower()}/{ns}/{route['metadata']['name']}/rule/{r}/match/{m}"
                keyed.append(
                    (key, {"name": name, "match": envoy_match, **action, "typed_per_filter_config": enable})
                )
    ordered = [route for _, route in sorted(keyed, key=lambda kr: kr[0], reverse=True)]
    return ordered, list(clusters.values())


def _action(
    route: Obj, r: int, rule: Obj, filters: Mapping[tuple[str, str], Obj], upstreams: Mapping[tuple[str, str], int],
    clusters: dict[str, Obj], grpc: bool,
) -> Obj:  # fmt: skip
    ns = route["metadata"]["namespace"]
    for f in rule.get("filters", []):
        assert f["type"] == "ExtensionRef" and f["extensionRef"]["kind"] == "HTTPRouteFilter", f
        direct = filters[(ns, f["extensionRef"]["name"])]["spec"]["directResponse"]
        headers = [
            {
                "header": {"key": "content-type", "value": direct["contentType"]},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        ]
        body = {"inline_string": direct["body"]["inline"]}
        return {
            "direct_response": {"status": direct["statusCode"], "body": body},
            "response_headers_to_add": headers,
        }
    weighted = []
    for ref in rule["backendRefs"]:
        name = f"{route['kind'].lower()}/{ns}/{route['metadata']['name']}/rule/{r}/{ref['name']}"
        clusters[name] = b.static_cluster(name, "127.0.0.1", upstreams[(ns, ref["name"])], http2=grpc)
        weighted.append({"name": name, "weight": ref.get("weight", 1)})
    if len(weighted) == 1:
        return {"route": {"cluster": weighted[0]["name"]}}
    return {"route": {"weighted_clusters": {"clusters": weighted}}}


def eg_bootstrap(
    objs: list[Obj], *, upstreams: Mapping[tuple[str, str], int], meshgate: Mapping[int, int]
) -> Obj:
    """The proxy's bootstrap, listening on 127.0.0.1:0 (listener `eg_gateway`). `upstreams`: (namespace,
    Service name) -> local port; `meshgate`: meshgate Service port -> local port."""
    (security,) = _kind(objs, "SecurityPolicy")
    authz, authz_cluster = _ext_authz(security, meshgate)
    routes, clusters = _routes(objs, authz["name"], upstreams)
    hcm: Obj = {
        "@type": _T + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "eg_gateway",
        "codec_type": "AUTO",
        "route_config": {"name": "eg", "virtual_hosts": [{"name": "eg", "domains": ["*"], "routes": routes}]},
        "http_filters": [authz, b.router_filter()],
    }
    for policy in _kind(objs, "ClientTrafficPolicy"):
        removed = policy["spec"]["headers"]["earlyRequestHeaders"]["remove"]
        mutation = {
            "@type": _T + "envoy.extensions.http.early_header_mutation.header_mutation.v3.HeaderMutation",
            "mutations": [{"remove": name} for name in removed],
        }
        hcm["early_header_mutation_extensions"] = [
            {"name": "envoy.http.early_header_mutation.header_mutation", "typed_config": mutation}
        ]
    listener = {
        "name": "eg_gateway",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": [{"name": _HCM, "typed_config": hcm}]}],
    }
    return b.bootstrap([listener], [authz_cluster, *clusters])
