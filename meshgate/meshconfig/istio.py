"""Policy -> Istio: ingress Gateway, per-model VirtualService + DestinationRule, meshgate as the
ext_authz (AuthorizationPolicy CUSTOM) and global rate limit (EnvoyFilter) provider, tenant isolation.

The meshConfig `extensionProviders` entry is not a Kubernetes object: `mesh_config()` returns it as
Helm values for the istiod chart (see docs/meshconfig.md).
"""

from __future__ import annotations

import json

from ..policy.model import Model, Policy, Quota
from ._common import (
    IDENTITY_HEADERS,
    LABEL_VERSION,
    Obj,
    meshgate_host,
    metadata,
    model_host,
    model_labels,
    model_name,
    model_namespace,
    model_port,
    proto_duration,
    tenant_namespace,
)

__all__ = ["GATEWAY_NAME", "mesh_config", "render_istio"]

GATEWAY_NAME = "meshgate"
_NET = "networking.istio.io/v1"
_SEC = "security.istio.io/v1"
_MODEL_PATHS = {
    "v2-rest": ("/v2/models/*",),
    "v2-grpc": ("/inference.GRPCInferenceService/*",),
    "openai": ("/v1/*", "/openai/v1/*"),
}


def render_istio(policy: Policy) -> list[Obj]:
    objs: list[Obj] = [_gateway(policy), _ext_authz(policy), *_ratelimit_filters(policy)]
    for model in policy.models:
        objs += [_virtual_service(policy, model), _destination_rule(model)]
    objs += _isolation(policy)
    if policy.mesh.istio.request_authentication:
        objs += _request_authentication(policy)
    return objs


def mesh_config(policy: Policy) -> Obj:
    """The istiod Helm values fragment that registers meshgate as an ext_authz provider."""
    ext = policy.gateway.ext_authz
    provider = {
        "name": policy.mesh.istio.provider,
        "envoyExtAuthzGrpc": {
            "service": meshgate_host(policy),
            "port": policy.mesh.extauthz_port,
            "timeout": proto_duration(ext.timeout),
            "failOpen": ext.failure_mode_allow,
            "includeRequestBodyInCheck": {
                "maxRequestBytes": ext.max_request_bytes,
                "allowPartialMessage": False,
                "packAsBytes": True,
            },
        },
    }
    return {"meshConfig": {"extensionProviders": [provider]}}


def _gw_ns(policy: Policy) -> str:
    return policy.mesh.istio.gateway_namespace


def _selector(policy: Policy) -> dict[str, str]:
    return dict(policy.mesh.istio.gateway_selector)


def _gateway(policy: Policy) -> Obj:
    istio = policy.mesh.istio
    server = {"port": {"number": istio.port, "name": "http", "protocol": "HTTP"}, "hosts": list(istio.hosts)}
    spec = {"selector": _selector(policy), "servers": [server]}
    return {
        "apiVersion": _NET,
        "kind": "Gateway",
        "metadata": metadata(GATEWAY_NAME, _gw_ns(policy)),
        "spec": spec,
    }


# --- routing -------------------------------------------------------------------------------------


def _base_matches(model: Model) -> list[Obj]:
    """How a request is recognised as this model's: its REST path, or the header meshgate sets."""
    by_header: Obj = {"headers": {IDENTITY_HEADERS["model"]: {"exact": model.name}}}
    if model.protocol == "v2-rest":
        prefix = f"/v2/models/{model.name}"
        return [{"uri": {"exact": prefix}}, {"uri": {"prefix": prefix + "/"}}, by_header]
    return [by_header]


def _destination(model: Model, subset: str) -> Obj:
    return {"host": model_host(model), "subset": subset, "port": {"number": model_port(model)[1]}}


def _http_route(model: Model, name: str, matches: list[Obj], weights: list[tuple[str, int]]) -> Obj:
    route: Obj = {"name": name, "match": matches}
    if len(weights) == 1:
        route["route"] = [{"destination": _destination(model, weights[0][0])}]
    else:
        route["route"] = [{"destination": _destination(model, v), "weight": w} for v, w in weights]
    route["timeout"] = proto_duration(model.timeout)
    retries: Obj = {"attempts": model.retries.attempts}
    if model.retries.attempts:
        retries["retryOn"] = ",".join(model.retries.retry_on)
        if model.retries.per_try_timeout is not None:
            retries["perTryTimeout"] = proto_duration(model.retries.per_try_timeout)
    route["retries"] = retries
    if model.shadow is not None:
        route["mirror"] = _destination(model, model.shadow.version)
        route["mirrorPercentage"] = {"value": model.shadow.percent}
    return route


def _virtual_service(policy: Policy, model: Model) -> Obj:
    base = _base_matches(model)
    http: list[Obj] = []
    for i, ab in enumerate(model.ab):
        matches = [{**m, "headers": {**m.get("headers", {}), ab.header: {"exact": ab.value}}} for m in base]
        http.append(_http_route(model, f"ab-{i}-{ab.version}", matches, [(ab.version, 100)]))
    weights = [(v.name, v.weight) for v in model.versions if v.weight]
    http.append(_http_route(model, "canary", base, weights))
    spec = {
        "hosts": list(policy.mesh.istio.hosts),
        "gateways": [f"{_gw_ns(policy)}/{GATEWAY_NAME}"],
        "http": http,
    }
    meta = metadata(model_name(model), model_namespace(model), model_labels(model))
    return {"apiVersion": _NET, "kind": "VirtualService", "metadata": meta, "spec": spec}


def _destination_rule(model: Model) -> Obj:
    cb, od = model.circuit_breaker, model.outlier_detection
    traffic: Obj = {
        "tls": {"mode": "ISTIO_MUTUAL"},
        "connectionPool": {
            "tcp": {"maxConnections": cb.max_connections},
            "http": {
                "http1MaxPendingRequests": cb.max_pending_requests,
                "http2MaxRequests": cb.max_requests,
                "maxRetries": cb.max_retries,
            },
        },
    }
    if od is not None:
        traffic["outlierDetection"] = {
            "consecutive5xxErrors": od.consecutive_5xx_errors,
            "interval": proto_duration(od.interval),
            "baseEjectionTime": proto_duration(od.base_ejection_time),
            "maxEjectionPercent": od.max_ejection_percent,
        }
    subsets = [{"name": v.name, "labels": {LABEL_VERSION: v.name}} for v in model.versions]
    spec = {"host": model_host(model), "trafficPolicy": traffic, "subsets": subsets}
    meta = metadata(model_name(model), model_namespace(model), model_labels(model))
    return {"apiVersion": _NET, "kind": "DestinationRule", "metadata": meta, "spec": spec}


# --- security ------------------------------------------------------------------------------------


def _ext_authz(policy: Policy) -> Obj:
    protocols = sorted({m.protocol for m in policy.models}) or ["v2-rest"]
    paths = [p for proto in protocols for p in _MODEL_PATHS[proto]]
    spec = {
        "selector": {"matchLabels": _selector(policy)},
        "action": "CUSTOM",
        "provider": {"name": policy.mesh.istio.provider},
        "rules": [{"to": [{"operation": {"paths": paths}}]}],
    }
    meta = metadata("meshgate-ext-authz", _gw_ns(policy))
    return {"apiVersion": _SEC, "kind": "AuthorizationPolicy", "metadata": meta, "spec": spec}


def _policy(name: str, namespace: str, action: str, namespaces: list[str]) -> Obj:
    spec = {"action": action, "rules": [{"from": [{"source": {"namespaces": namespaces}}]}]}
    meta = metadata(name, namespace)
    return {"apiVersion": _SEC, "kind": "AuthorizationPolicy", "metadata": meta, "spec": spec}


def _isolation(policy: Policy) -> list[Obj]:
    """Tenants reach models only through the gateway, and never reach each other's namespaces."""
    gateway_ns, meshgate_ns = _gw_ns(policy), policy.mesh.namespace
    tenant_nss = sorted({tenant_namespace(t) for t in policy.tenants})
    model_nss = sorted({model_namespace(m) for m in policy.models})
    objs: list[Obj] = []
    for ns in tenant_nss:
        if ns not in model_nss:
            allowed = sorted({ns, gateway_ns, meshgate_ns})
            objs.append(_policy("meshgate-tenant-isolation", ns, "ALLOW", allowed))
    serverless = {
        model_namespace(m) for m in policy.models for v in m.versions if v.deployment_mode == "Knative"
    }
    for ns in model_nss:
        # Knative's activator sits in front of scaled-to-zero (Knative mode) InferenceServices
        extra = {"knative-serving"} if ns in serverless else set()
        objs.append(
            _policy("meshgate-models-allow", ns, "ALLOW", sorted({ns, gateway_ns, meshgate_ns} | extra))
        )
        tenants = [t for t in tenant_nss if t not in (ns, gateway_ns, meshgate_ns)]
        if tenants:
            objs.append(_policy("meshgate-models-deny-tenants", ns, "DENY", tenants))
        meta = metadata("meshgate-strict-mtls", ns)
        objs.append(
            {
                "apiVersion": _SEC,
                "kind": "PeerAuthentication",
                "metadata": meta,
                "spec": {"mtls": {"mode": "STRICT"}},
            }
        )
    return objs


def _request_authentication(policy: Policy) -> list[Obj]:
    rules: list[Obj] = []
    for issuer in policy.issuers:
        if issuer.shared_secret is not None:
            continue  # Istio verifies public keys only; meshgate still checks HMAC tokens
        rule: Obj = {"issuer": issuer.issuer, "audiences": list(issuer.audiences)}
        if issuer.jwks_uri is not None:
            rule["jwksUri"] = issuer.jwks_uri
        elif issuer.jwks is not None:
            rule["jwks"] = json.dumps(issuer.jwks, sort_keys=True, default=dict)
        rule["forwardOriginalToken"] = True
        rules.append(rule)
    if not rules:
        return []
    spec = {"selector": {"matchLabels": _selector(policy)}, "jwtRules": rules}
    meta = metadata("meshgate-jwt", _gw_ns(policy))
    return [{"apiVersion": _SEC, "kind": "RequestAuthentication", "metadata": meta, "spec": spec}]


# --- rate limit ----------------------------------------------------------------------------------


def quota_actions(quota: Quota) -> list[Obj]:
    """Descriptor for one quota: ("quota", name) then one entry per counted identity header."""
    actions: list[Obj] = [{"generic_key": {"descriptor_key": "quota", "descriptor_value": quota.name}}]
    keys = list(quota.per)
    if quota.models != ("*",) and "model" not in keys:
        keys.append("model")
    for key in ("tenant", "user", "model"):
        if key in keys:
            actions.append({"request_headers": {"header_name": IDENTITY_HEADERS[key], "descriptor_key": key}})
    return actions


def _http_filter_listener(sub_filter: str) -> Obj:
    """EnvoyFilter listener match: the gateway's HTTP connection manager, at `sub_filter`."""
    return {
        "filterChain": {
            "filter": {
                "name": "envoy.filters.network.http_connection_manager",
                "subFilter": {"name": sub_filter},
            },
        },
    }


def _ratelimit_config(policy: Policy) -> Obj:
    rl = policy.gateway.ratelimit
    host = meshgate_host(policy)
    config: Obj = {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit",
        "domain": rl.domain,
        "failure_mode_deny": rl.failure_mode_deny,
        "timeout": proto_duration(rl.timeout),
        "rate_limit_service": {
            "grpc_service": {
                "envoy_grpc": {
                    "cluster_name": f"outbound|{policy.mesh.ratelimit_port}||{host}",
                    "authority": host,
                },
            },
            "transport_api_version": "V3",
        },
    }
    if rl.response_headers != "none":
        config["enable_x_ratelimit_headers"] = "DRAFT_VERSION_03"
    return config


def _ratelimit_filters(policy: Policy) -> list[Obj]:
    """As istio.io's "Enabling Rate Limits using Envoy": the filter before the router, and the
    rate_limits actions merged into every virtual host of the gateway."""
    patches: list[Obj] = [
        {
            "applyTo": "HTTP_FILTER",
            "match": {"context": "GATEWAY", "listener": _http_filter_listener("envoy.filters.http.router")},
            "patch": {
                "operation": "INSERT_BEFORE",
                "value": {"name": "envoy.filters.http.ratelimit", "typed_config": _ratelimit_config(policy)},
            },
        },
    ]
    if policy.quotas:
        patches.append(
            {
                "applyTo": "VIRTUAL_HOST",
                "match": {
                    "context": "GATEWAY",
                    "routeConfiguration": {"vhost": {"name": "", "route": {"action": "ANY"}}},
                },
                "patch": {
                    "operation": "MERGE",
                    "value": {"rate_limits": [{"actions": quota_actions(q)} for q in policy.quotas]},
                },
            }
        )
    objs = [_envoy_filter(policy, "meshgate-ratelimit", patches)]
    if any(m.protocol != "v2-rest" for m in policy.models):
        objs.append(_envoy_filter(policy, "meshgate-ext-authz-route", [_clear_route_cache()]))
    return objs


def _clear_route_cache() -> Obj:
    """gRPC and OpenAI requests name their model in the body: meshgate's ext_authz answer sets
    x-meshgate-model, and the route must be chosen again after it (as in meshgate's own gateway)."""
    listener = _http_filter_listener("envoy.filters.http.ext_authz")
    value = {
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
            "clear_route_cache": True,
        },
    }
    return {
        "applyTo": "HTTP_FILTER",
        "match": {"context": "GATEWAY", "listener": listener},
        "patch": {"operation": "MERGE", "value": value},
    }


def _envoy_filter(policy: Policy, name: str, patches: list[Obj]) -> Obj:
    spec = {"workloadSelector": {"labels": _selector(policy)}, "configPatches": patches}
    meta = metadata(name, _gw_ns(policy))
    return {
        "apiVersion": "networking.istio.io/v1alpha3",
        "kind": "EnvoyFilter",
        "metadata": meta,
        "spec": spec,
    }
