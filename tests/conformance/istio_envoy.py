"""The Envoy configuration istiod would give the ingress gateway for meshgate's Istio rendering, built
here from the rendered objects so that a real Envoy can run it (no control plane runs in CI).

Only what meshgate renders is translated, the way istiod translates it; anything else raises, so a new
construct in the renderer needs its translation here first:
- the meshConfig `envoyExtAuthzGrpc` provider -> the `envoy.filters.http.ext_authz` filter
  (pilot/pkg/security/authz/builder/extauthz.go generateGRPCConfig; testdata
  http/extended-custom-grpc-provider-out2.yaml): envoy_grpc cluster `outbound|<port>||<service>`,
  failure_mode_allow = failOpen, with_request_body from includeRequestBodyInCheck, and
  filter_enabled_metadata on the RBAC filter's `istio_ext_authz_shadow_effective_policy_id` starting
  with `istio-ext-authz-<provider>`; `clearRouteCache` is not carried (istio/istio#61558);
- the CUSTOM AuthorizationPolicy -> an `envoy.filters.http.rbac` filter before it with shadow rules,
  action DENY, stat prefix `istio_ext_authz_`, one policy per rule named
  `istio-ext-authz-<provider>-ns[<ns>]-policy[<name>]-rule[<i>]` (builder.go policyName; testdata
  http/extended-custom-grpc-provider-out1.yaml); an empty rule is `any: true` (model.go
  generatePermission), `paths` / `notPaths` are url_path matches (testdata http/allow-full-rule-out.yaml);
- the VirtualService bound to the Gateway -> one route per http[].match (an http route without match:
  one route matching everything), named after http[].name (core/route/route.go translateRoute):
  uri exact -> path, prefix -> prefix, headers exact; destinations -> clusters
  `outbound|<port>|<subset>|<host>`, weights, timeout; directResponse; headers.response.set;
- EnvoyFilter patches in order: NETWORK_FILTER / HTTP_FILTER MERGE (typed configs of the same type
  merged as protobuf messages: lists appended), HTTP_FILTER INSERT_BEFORE, VIRTUAL_HOST MERGE, HTTP_ROUTE
  MERGE by route name.
Not translated (no bearing on who may reach what): retries, mirrors, DestinationRule traffic policies,
mTLS, and the filters Istio adds for telemetry.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from tests.harness import bootstraps as b

__all__ = ["istio_bootstrap"]

Obj = dict[str, Any]
_EXT_AUTHZ = "envoy.filters.http.ext_authz"
_RBAC = "envoy.filters.http.rbac"
_HCM = "envoy.filters.network.http_connection_manager"
_T = "type.googleapis.com/"


def _kind(objs: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind]


def _ext_authz(provider: Mapping[str, Any]) -> Obj:
    grpc = provider["envoyExtAuthzGrpc"]
    unknown = set(grpc) - {
        "service",
        "port",
        "timeout",
        "failOpen",
        "clearRouteCache",
        "includeRequestBodyInCheck",
    }
    assert not unknown, f"provider fields not translated: {unknown}"
    config: Obj = {
        "@type": _T + "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
        "grpc_service": {
            "envoy_grpc": {
                "cluster_name": f"outbound|{grpc['port']}||{grpc['service']}",
                "authority": grpc["service"],
            },
            "timeout": grpc.get("timeout", "600s"),
        },
        "failure_mode_allow": grpc.get("failOpen", False),
        "transport_api_version": "V3",
        "filter_enabled_metadata": {
            "filter": _RBAC,
            "path": [{"key": "istio_ext_authz_shadow_effective_policy_id"}],
            "value": {"string_match": {"prefix": f"istio-ext-authz-{provider['name']}"}},
        },
    }
    body = grpc.get("includeRequestBodyInCheck")
    if body is not None:
        config["with_request_body"] = {
            "max_request_bytes": body["maxRequestBytes"],
            "allow_partial_message": body.get("allowPartialMessage", False),
            "pack_as_bytes": body.get("packAsBytes", False),
        }
    return {"name": _EXT_AUTHZ, "typed_config": config}


def _path_rule(path: str) -> Obj:
    if path.endswith("*"):
        return {"url_path": {"path": {"prefix": path[:-1]}}}
    if path.startswith("*"):
        return {"url_path": {"path": {"suffix": path[1:]}}}
    return {"url_path": {"path": {"exact": path}}}


def _permission(rule: Mapping[str, Any]) -> Obj:
    assert set(rule) <= {"to"}, f"rule fields not translated: {set(rule)}"
    rules: list[Obj] = []
    for to in rule.get("to", []):
        operation = to["operation"]
        assert set(operation) <= {"paths", "notPaths"}, f"operation fields not translated: {set(operation)}"
        if "paths" in operation:
            rules.append({"or_rules": {"rules": [_path_rule(p) for p in operation["paths"]]}})
        if "notPaths" in operation:
            rules.append(
                {"not_rule": {"or_rules": {"rules": [_path_rule(p) for p in operation["notPaths"]]}}}
            )
    return {"and_rules": {"rules": rules or [{"any": True}]}}


def _rbac(policies: list[Obj]) -> Obj:
    shadow: Obj = {}
    for policy in policies:
        spec = policy["spec"]
        assert spec["action"] == "CUSTOM"
        provider, meta = spec["provider"]["name"], policy["metadata"]
        for i, rule in enumerate(spec.get("rules", [])):
            name = f"istio-ext-authz-{provider}-ns[{meta['namespace']}]-policy[{meta['name']}]-rule[{i}]"
            shadow[name] = {
                "permissions": [_permission(rule)],
                "principals": [{"and_ids": {"ids": [{"any": True}]}}],
            }
    config = {
        "@type": _T + "envoy.extensions.filters.http.rbac.v3.RBAC",
        "shadow_rules": {"action": "DENY", "policies": shadow},
        "shadow_rules_stat_prefix": "istio_ext_authz_",
    }
    return {"name": _RBAC, "typed_config": config}


def _cluster_of(destination: Mapping[str, Any]) -> str:
    return f"outbound|{destination['port']['number']}|{destination.get('subset', '')}|{destination['host']}"


def _match(match: Mapping[str, Any]) -> Obj:
    assert set(match) <= {"uri", "headers"}, f"match fields not translated: {set(match)}"
    out: Obj = {"prefix": "/"}
    uri = match.get("uri")
    if uri is not None:
        ((kind, value),) = uri.items()
        out = {"path": value} if kind == "exact" else {"prefix": value}
    headers = []
    for name, condition in (match.get("headers") or {}).items():
        ((kind, value),) = condition.items()
        assert kind == "exact", kind
        headers.append({"name": name, "string_match": {"exact": value}})
    if headers:
        out["headers"] = headers
    return out


def _routes(http: Mapping[str, Any]) -> list[Obj]:
    known = {
        "name",
        "match",
        "route",
        "timeout",
        "retries",
        "mirror",
        "mirrorPercentage",
        "directResponse",
        "headers",
    }
    assert set(http) <= known, f"http route fields not translated: {set(http) - known}"
    action: Obj = {}
    if "directResponse" in http:
        direct = http["directResponse"]
        action["direct_response"] = {
            "status": direct["status"],
            "body": {"inline_string": direct["body"]["string"]},
        }
    else:
        dests = http["route"]
        if len(dests) == 1:
            route: Obj = {"cluster": _cluster_of(dests[0]["destination"])}
        else:
            clusters = [{"name": _cluster_of(d["destination"]), "weight": d["weight"]} for d in dests]
            route = {"weighted_clusters": {"clusters": clusters}}
        if "timeout" in http:
            route["timeout"] = http["timeout"]
        action["route"] = route
    response = (http.get("headers") or {}).get("response", {})
    assert set(response) <= {"set"}, response
    if response.get("set"):
        action["response_headers_to_add"] = [
            {"header": {"key": k, "value": v}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
            for k, v in response["set"].items()
        ]
    return [
        {"name": http["name"], "match": _match(m), **copy.deepcopy(action)} for m in http.get("match") or [{}]
    ]


def _merge(dst: Obj, src: Mapping[str, Any]) -> None:
    """Protobuf merge of JSON forms: messages merged field by field, lists appended, scalars replaced;
    typed configs must be of the same type (istiod's MergeAnyWithAny)."""
    if "@type" in src and "@type" in dst:
        assert src["@type"] == dst["@type"], (src["@type"], dst["@type"])
    for key, value in src.items():
        if isinstance(value, Mapping) and isinstance(dst.get(key), dict):
            _merge(dst[key], value)
        elif isinstance(value, list) and isinstance(dst.get(key), list):
            dst[key].extend(copy.deepcopy(value))
        else:
            dst[key] = copy.deepcopy(value)


def _apply(patch: Mapping[str, Any], hcm: Obj, filters: list[Obj], vhost: Obj) -> None:
    apply_to, match, op = patch["applyTo"], patch["match"], patch["patch"]["operation"]
    value = patch["patch"]["value"]
    assert match["context"] == "GATEWAY"
    if apply_to == "NETWORK_FILTER" and op == "MERGE":
        assert match["listener"]["filterChain"]["filter"]["name"] == _HCM
        _merge(hcm, value["typed_config"])
    elif apply_to == "HTTP_FILTER":
        name = match["listener"]["filterChain"]["filter"]["subFilter"]["name"]
        index = next(i for i, f in enumerate(filters) if f["name"] == name)
        if op == "MERGE":
            _merge(filters[index]["typed_config"], value["typed_config"])
        elif op == "INSERT_BEFORE":
            filters.insert(index, copy.deepcopy(dict(value)))
        else:
            raise NotImplementedError(op)
    elif apply_to == "VIRTUAL_HOST" and op == "MERGE":
        _merge(vhost, value)
    elif apply_to == "HTTP_ROUTE" and op == "MERGE":
        name = match["routeConfiguration"]["vhost"]["route"]["name"]
        matched = [r for r in vhost["routes"] if r["name"] == name]
        assert matched, f"HTTP_ROUTE patch for {name!r} matches no route"
        for route in matched:
            _merge(route, value)
    else:
        raise NotImplementedError(f"{apply_to} {op}")


def istio_bootstrap(
    objs: list[Obj],
    mesh_values: Mapping[str, Any],
    *,
    upstreams: Mapping[str, tuple[int, bool]],
    meshgate: Mapping[int, int],
) -> Obj:
    """The gateway's bootstrap, listening on 127.0.0.1:0 (listener `istio_gateway`). `upstreams`: model
    Service host -> (local port, http2); `meshgate`: meshgate Service port -> local port."""
    (provider,) = mesh_values["meshConfig"]["extensionProviders"]
    custom = [p for p in _kind(objs, "AuthorizationPolicy") if p["spec"].get("action") == "CUSTOM"]
    filters = [_rbac(custom), _ext_authz(provider), b.router_filter()]
    # VirtualServices bound to one gateway host are merged, ordered by creation time (istio/istio#10464):
    # here, the order they were rendered in
    services = _kind(objs, "VirtualService")
    routes = [r for vs in services for http in vs["spec"]["http"] for r in _routes(http)]
    hosts = sorted({h for vs in services for h in vs["spec"]["hosts"]})
    hcm: Obj = {
        "@type": _T + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "istio_gateway",
        "codec_type": "AUTO",
    }
    vhost: Obj = {"name": "gateway", "domains": hosts, "routes": routes}
    for envoy_filter in _kind(objs, "EnvoyFilter"):
        for patch in envoy_filter["spec"]["configPatches"]:
            _apply(patch, hcm, filters, vhost)
    hcm["route_config"] = {"name": "http.gateway", "virtual_hosts": [vhost]}
    hcm["http_filters"] = filters
    listener = {
        "name": "istio_gateway",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": [{"name": _HCM, "typed_config": hcm}]}],
    }
    return b.bootstrap([listener], _clusters(routes, filters, upstreams, meshgate))


def _clusters(
    routes: list[Obj],
    filters: list[Obj],
    upstreams: Mapping[str, tuple[int, bool]],
    meshgate: Mapping[int, int],
) -> list[Obj]:
    names: set[str] = set()
    for route in routes:
        action = route.get("route", {})
        names |= {action["cluster"]} if "cluster" in action else set()
        names |= {c["name"] for c in action.get("weighted_clusters", {}).get("clusters", [])}
    for f in filters:
        service = f["typed_config"].get("grpc_service") or f["typed_config"].get(
            "rate_limit_service", {}
        ).get("grpc_service")
        if service:
            names.add(service["envoy_grpc"]["cluster_name"])
    clusters = []
    for name in sorted(names):
        _, port, subset, host = name.split("|")
        if subset:
            local, http2 = upstreams[host]
        else:
            local, http2 = meshgate[int(port)], True
        clusters.append(b.static_cluster(name, "127.0.0.1", local, http2=http2))
    return clusters
