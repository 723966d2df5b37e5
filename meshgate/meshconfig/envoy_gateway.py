"""Policy -> Envoy Gateway / Envoy AI Gateway: Gateway, HTTPRoute (KServe v2 REST), GRPCRoute (Triton
gRPC), AIGatewayRoute + AIServiceBackend + Backend (OpenAI protocol), SecurityPolicy extAuth to
meshgate, BackendTrafficPolicy global rate limits on the identity headers (`_eg_ratelimit`),
ReferenceGrant, and the namespaces the policy declares.

Routes live in the model's namespace and point at the per-version Services that `--target kserve`
renders, so only the SecurityPolicy -> meshgate Service reference crosses namespaces.

Deny by default, by construction. Envoy Gateway enables ext_authz per route (disabled on the listener,
enabled on each route a SecurityPolicy covers: internal/xds/translator/extauth.go), and Envoy runs no
filter for a request that matches no route. So:
- a catch-all HTTPRoute (`/`, answering 404 through an HTTPRouteFilter directResponse) gives every
  request a route, covered by the Gateway's SecurityPolicy: a gRPC request, whose model is only in its
  body, matches it first; ext_authz sets x-meshgate-model and recomputes the route (`recomputeRoute`,
  Envoy's clear_route_cache), and the GRPCRoute's longer path prefix wins (Envoy Gateway sorts routes
  by match type, then path length, then header matches: internal/gatewayapi/sort.go; a GRPCRoute
  service match is a path prefix `/<service>`: internal/gatewayapi/route.go);
- the Gateway accepts routes only from the namespaces meshgate renders routes into, so no other
  namespace can attach a route (and a SecurityPolicy of its own) to it;
- a ClientTrafficPolicy removes every header meshgate sets (contract.GATEWAY_HEADERS) from what the
  client sent, before routing (`earlyRequestHeaders`).
"""

from __future__ import annotations

from meshgate import contract

from ..policy.model import Model, ModelVersion, Policy
from ._common import (
    Obj,
    gateway_api_duration,
    metadata,
    model_labels,
    model_name,
    model_namespace,
    model_port,
    version_name,
    version_service,
)
from ._eg_ratelimit import traffic_policy
from ._namespaces import declared_model_namespaces, declared_tenant_namespaces, namespace, tenant_objects

__all__ = ["GATEWAY_NAME", "NO_ROUTE", "render_envoy_gateway"]

GATEWAY_NAME = "meshgate"
NO_ROUTE = "meshgate-no-route"
_GW_API = "gateway.networking.k8s.io/v1"
_EG = "gateway.envoyproxy.io/v1alpha1"
_AIGW = "aigateway.envoyproxy.io/v1beta1"
_NAME_LABEL = "kubernetes.io/metadata.name"
# llmRequestCosts recorded by Envoy AI Gateway; token quotas are charged the total
TOKEN_COSTS = (
    ("llm_input_token", "InputToken"),
    ("llm_output_token", "OutputToken"),
    ("llm_total_token", "TotalToken"),
)


def render_envoy_gateway(policy: Policy) -> list[Obj]:
    objs: list[Obj] = [
        namespace(_ns(policy)),
        _gateway(policy),
        _security_policy(policy),
        _reference_grant(policy),
    ]
    objs += [_client_traffic_policy(policy), *_no_route(policy)]
    rate_limit = traffic_policy(policy, _ns(policy), _gateway_target())
    if rate_limit is not None:
        objs.append(rate_limit)
    objs += [namespace(ns) for ns in declared_model_namespaces(policy) if ns != _ns(policy)]
    for ns in declared_tenant_namespaces(policy):
        objs += tenant_objects(ns, [_ns(policy), policy.mesh.namespace])
    for model in policy.models:
        if model.protocol == "openai":
            objs += _ai_route(policy, model)
        elif model.protocol == "v2-grpc":
            objs.append(_grpc_route(policy, model))
        else:
            objs.append(_http_route(policy, model))
    return objs


def _ns(policy: Policy) -> str:
    return policy.mesh.envoy_gateway.namespace


def _parent_ref(policy: Policy) -> Obj:
    return {
        "group": "gateway.networking.k8s.io",
        "kind": "Gateway",
        "name": GATEWAY_NAME,
        "namespace": _ns(policy),
    }


def _gateway_target() -> list[Obj]:
    return [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": GATEWAY_NAME}]


def _route_namespaces(policy: Policy) -> list[str]:
    return sorted({_ns(policy)} | {model_namespace(m) for m in policy.models})


def _gateway(policy: Policy) -> Obj:
    eg = policy.mesh.envoy_gateway
    only = {"matchExpressions": [{"key": _NAME_LABEL, "operator": "In", "values": _route_namespaces(policy)}]}
    allowed = {"namespaces": {"from": "Selector", "selector": only}}
    base: Obj = {"protocol": "HTTP", "port": eg.port, "allowedRoutes": allowed}
    if eg.hostnames:
        listeners = [{"name": f"http-{i}", "hostname": h, **base} for i, h in enumerate(eg.hostnames)]
    else:
        listeners = [{"name": "http", **base}]
    spec = {"gatewayClassName": eg.gateway_class, "listeners": listeners}
    return {
        "apiVersion": _GW_API,
        "kind": "Gateway",
        "metadata": metadata(GATEWAY_NAME, _ns(policy)),
        "spec": spec,
    }


# --- routes --------------------------------------------------------------------------------------


def _backend_ref(model: Model, version: ModelVersion, weight: int | None = None) -> Obj:
    ref: Obj = {"name": version_service(model, version), "port": model_port(model)[1]}
    if weight is not None:
        ref["weight"] = weight
    return ref


def _weighted(model: Model) -> list[Obj]:
    return [_backend_ref(model, v, v.weight) for v in model.versions if v.weight]


def _ab_refs(model: Model, version: str) -> list[Obj]:
    chosen = model.version(version)
    assert chosen is not None  # cross-checked by the policy loader
    return [_backend_ref(model, chosen)]


def _route_meta(model: Model) -> Obj:
    return metadata(model_name(model), model_namespace(model), model_labels(model))


def _route_spec(policy: Policy, rules: list[Obj]) -> Obj:
    spec: Obj = {"parentRefs": [_parent_ref(policy)]}
    if policy.mesh.envoy_gateway.hostnames:
        spec["hostnames"] = list(policy.mesh.envoy_gateway.hostnames)
    spec["rules"] = rules
    return spec


def _mirror(model: Model) -> list[Obj]:
    if model.shadow is None:
        return []
    shadow = model.version(model.shadow.version)
    assert shadow is not None
    fraction = {"numerator": round(model.shadow.percent * 100), "denominator": 10000}
    return [
        {
            "type": "RequestMirror",
            "requestMirror": {"backendRef": _backend_ref(model, shadow), "fraction": fraction},
        }
    ]


def _http_route(policy: Policy, model: Model) -> Obj:
    path = {"type": "PathPrefix", "value": f"/v2/models/{model.name}"}
    timeouts = {"request": gateway_api_duration(model.timeout)}
    rules: list[Obj] = []
    for i, ab in enumerate(model.ab):
        match = {"path": path, "headers": [{"type": "Exact", "name": ab.header, "value": ab.value}]}
        rules.append(
            {
                "name": f"ab-{i}",
                "matches": [match],
                "filters": _mirror(model),
                "backendRefs": _ab_refs(model, ab.version),
                "timeouts": timeouts,
            }
        )
    rules.append(
        {
            "name": "canary",
            "matches": [{"path": path}],
            "filters": _mirror(model),
            "backendRefs": _weighted(model),
            "timeouts": timeouts,
        }
    )
    for rule in rules:
        if not rule["filters"]:
            del rule["filters"]
    return {
        "apiVersion": _GW_API,
        "kind": "HTTPRoute",
        "metadata": _route_meta(model),
        "spec": _route_spec(policy, rules),
    }


def _grpc_route(policy: Policy, model: Model) -> Obj:
    """Triton gRPC names the model in the body: route on the header meshgate's ext_authz sets."""
    method = {"type": "Exact", "service": "inference.GRPCInferenceService"}
    by_model = {"type": "Exact", "name": contract.MODEL_HEADER, "value": model.name}
    rules: list[Obj] = []
    for i, ab in enumerate(model.ab):
        headers = [by_model, {"type": "Exact", "name": ab.header, "value": ab.value}]
        rules.append(
            {
                "name": f"ab-{i}",
                "matches": [{"method": method, "headers": headers}],
                "backendRefs": _ab_refs(model, ab.version),
            }
        )
    rules.append(
        {
            "name": "canary",
            "matches": [{"method": method, "headers": [by_model]}],
            "backendRefs": _weighted(model),
        }
    )
    return {
        "apiVersion": _GW_API,
        "kind": "GRPCRoute",
        "metadata": _route_meta(model),
        "spec": _route_spec(policy, rules),
    }


def _ai_ref(model: Model, version: ModelVersion, weight: int | None = None) -> Obj:
    ref: Obj = {"name": version_name(model, version)}
    if weight is not None:
        ref["weight"] = weight
    if version.served_name is not None:
        ref["modelNameOverride"] = version.served_name  # the name the backend serves (policy)
    elif version.storage_uri:
        # KServe's Hugging Face runtime serves the model under its InferenceService name
        ref["modelNameOverride"] = version_name(model, version)
    return ref


def _ai_route(policy: Policy, model: Model) -> list[Obj]:
    """AIGatewayRoute selects the model by x-ai-eg-model (set by Envoy AI Gateway from the body)."""
    ns = model_namespace(model)
    objs: list[Obj] = []
    for version in model.versions:
        name = version_name(model, version)
        host = f"{version_service(model, version)}.{ns}.svc.cluster.local"
        backend = {"endpoints": [{"fqdn": {"hostname": host, "port": model_port(model)[1]}}]}
        objs.append(
            {
                "apiVersion": _EG,
                "kind": "Backend",
                "metadata": metadata(name, ns, model_labels(model, version)),
                "spec": backend,
            }
        )
        # KServe's Hugging Face runtime (what --target kserve renders) serves OpenAI under /openai/v1
        schema = {"name": "OpenAI", "prefix": "/openai/v1"} if version.storage_uri else {"name": "OpenAI"}
        service_backend = {
            "schema": schema,
            "backendRef": {"group": "gateway.envoyproxy.io", "kind": "Backend", "name": name},
        }
        objs.append(
            {
                "apiVersion": _AIGW,
                "kind": "AIServiceBackend",
                "metadata": metadata(name, ns, model_labels(model, version)),
                "spec": service_backend,
            }
        )
    by_model = {"type": "Exact", "name": "x-ai-eg-model", "value": model.name}
    timeouts = {"request": gateway_api_duration(model.timeout)}
    rules: list[Obj] = []
    for i, ab in enumerate(model.ab):
        headers = [by_model, {"type": "Exact", "name": ab.header, "value": ab.value}]
        chosen = model.version(ab.version)
        assert chosen is not None
        refs = [_ai_ref(model, chosen)]
        rules.append(
            {"name": f"ab-{i}", "matches": [{"headers": headers}], "backendRefs": refs, "timeouts": timeouts}
        )
    refs = [_ai_ref(model, v, v.weight) for v in model.versions if v.weight]
    rules.append(
        {"name": "canary", "matches": [{"headers": [by_model]}], "backendRefs": refs, "timeouts": timeouts}
    )
    spec = _route_spec(policy, rules)
    spec["llmRequestCosts"] = [{"metadataKey": key, "type": kind} for key, kind in TOKEN_COSTS]
    objs.append({"apiVersion": _AIGW, "kind": "AIGatewayRoute", "metadata": _route_meta(model), "spec": spec})
    return objs


# --- policies ------------------------------------------------------------------------------------


def _security_policy(policy: Policy) -> Obj:
    ext = policy.gateway.ext_authz
    ext_auth: Obj = {
        "grpc": {
            "backendRefs": [
                {
                    "name": policy.mesh.service,
                    "namespace": policy.mesh.namespace,
                    "port": policy.mesh.extauthz_port,
                }
            ]
        },
        "failOpen": ext.failure_mode_allow,
        "timeout": gateway_api_duration(ext.timeout),
    }
    if any(m.protocol != "v2-rest" for m in policy.models):
        # the model is named in the body: send it to meshgate
        ext_auth["bodyToExtAuth"] = {"maxRequestBytes": ext.max_request_bytes}
    # pick the route again after meshgate's answer (it sets x-meshgate-model), as meshgate's own gateway
    ext_auth["recomputeRoute"] = True
    spec = {"targetRefs": _gateway_target(), "extAuth": ext_auth}
    return {
        "apiVersion": _EG,
        "kind": "SecurityPolicy",
        "metadata": metadata("meshgate-ext-auth", _ns(policy)),
        "spec": spec,
    }


def _reference_grant(policy: Policy) -> Obj:
    """Lets the SecurityPolicy in the gateway namespace reach the meshgate Service."""
    spec = {
        "from": [{"group": "gateway.envoyproxy.io", "kind": "SecurityPolicy", "namespace": _ns(policy)}],
        "to": [{"group": "", "kind": "Service", "name": policy.mesh.service}],
    }
    meta = metadata(f"meshgate-from-{_ns(policy)}", policy.mesh.namespace)
    return {
        "apiVersion": "gateway.networking.k8s.io/v1beta1",
        "kind": "ReferenceGrant",
        "metadata": meta,
        "spec": spec,
    }


def _client_traffic_policy(policy: Policy) -> Obj:
    """Every header meshgate sets is removed from what the client sent, before routing."""
    spec = {
        "targetRefs": _gateway_target(),
        "headers": {"earlyRequestHeaders": {"remove": list(contract.GATEWAY_HEADERS)}},
    }
    return {
        "apiVersion": _EG,
        "kind": "ClientTrafficPolicy",
        "metadata": metadata("meshgate-strip-identity", _ns(policy)),
        "spec": spec,
    }


def _no_route(policy: Policy) -> list[Obj]:
    """The catch-all: every request the Gateway accepts has a route, so ext_authz runs on it; what no
    model route matches after ext_authz is answered 404."""
    response = {
        "contentType": "application/json",
        "statusCode": 404,
        "body": {"type": "Inline", "inline": contract.NO_ROUTE_BODY},
    }
    route_filter = {
        "apiVersion": _EG,
        "kind": "HTTPRouteFilter",
        "metadata": metadata(NO_ROUTE, _ns(policy)),
        "spec": {"directResponse": response},
    }
    rule = {
        "name": "no-route",
        "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
        "filters": [
            {
                "type": "ExtensionRef",
                "extensionRef": {
                    "group": "gateway.envoyproxy.io",
                    "kind": "HTTPRouteFilter",
                    "name": NO_ROUTE,
                },
            }
        ],
    }
    route = {
        "apiVersion": _GW_API,
        "kind": "HTTPRoute",
        "metadata": metadata(NO_ROUTE, _ns(policy)),
        "spec": _route_spec(policy, [rule]),
    }
    return [route_filter, route]
