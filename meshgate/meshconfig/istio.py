"""Policy -> Istio: ingress Gateway, one VirtualService for every model route plus a catch-all,
DestinationRules, meshgate as the ext_authz (AuthorizationPolicy CUSTOM on every request) and rate
limit (EnvoyFilter, `_istio_filters`) provider, isolation of the namespaces the policy declares.

Deny by default, by construction:
- the CUSTOM AuthorizationPolicy has one empty rule, which Istio compiles to a permission `any: true`
  (pilot/pkg/security/authz/model/model.go, generatePermission): ext_authz runs on every request the
  gateway accepts, whatever its path (contract.PUBLIC_PATHS would be excluded by notPaths; it is empty);
- every route is in one VirtualService, in the gateway's namespace, ending with a catch-all that answers
  404 after ext_authz ran. One resource because Istio orders routes merged from several VirtualServices
  by creation time (istio/istio#10464), so a catch-all of its own could shadow model routes;
- the Gateway binds only VirtualServices of its own namespace (`./host`, networking/v1alpha3/gateway.proto
  Server.hosts), so no other namespace can add a route to it.
The request is first matched against the catch-all when its model is named only in the body (OpenAI,
Triton gRPC); ext_authz reads the body, sets x-meshgate-model and clears the route cache (`_istio_filters`),
and Envoy picks the model's route. Client copies of x-meshgate-* are removed before any of this.

The meshConfig `extensionProviders` entry is not a Kubernetes object: `mesh_config()` returns it as
Helm values for the istiod chart, merged into the providers the cluster already has (docs/meshconfig.md).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from meshgate import contract

from ..policy._fields import K8S_NAME_PATTERN
from ..policy.model import Model, Policy
from ._common import (
    LABEL_VERSION,
    Obj,
    k8s_name,
    meshgate_host,
    metadata,
    model_host,
    model_labels,
    model_name,
    model_namespace,
    model_port,
    proto_duration,
)
from ._istio_filters import envoy_filters, route_name
from ._namespaces import declared_model_namespaces, declared_tenant_namespaces, namespace, tenant_objects

__all__ = ["GATEWAY_NAME", "NO_ROUTE", "mesh_config", "render_istio"]

GATEWAY_NAME = "meshgate"
NO_ROUTE = "meshgate.no-route"
_NET = "networking.istio.io/v1"
_LABEL = re.compile(K8S_NAME_PATTERN)  # (a DNS-1123 label)
_SEC = "security.istio.io/v1"


def render_istio(policy: Policy) -> list[Obj]:
    objs: list[Obj] = [_gateway(policy), _virtual_service(policy), _ext_authz(policy), *envoy_filters(policy)]
    objs += [_destination_rule(model) for model in policy.models]
    objs += _isolation(policy)
    if policy.mesh.istio.request_authentication:
        objs += _request_authentication(policy)
    return objs


def mesh_config(policy: Policy, existing: Mapping[str, Any] | None = None) -> Obj:
    """The istiod Helm values that register meshgate as an ext_authz provider. `existing`: the mesh
    config the cluster runs (Helm values with `meshConfig`, or the `mesh` document itself): its other
    providers are kept in order, one of meshgate's name is replaced. Helm replaces lists on upgrade, so
    without `existing` the fragment holds meshgate's provider only."""
    ext = policy.gateway.ext_authz
    provider = {
        "name": policy.mesh.istio.provider,
        "envoyExtAuthzGrpc": {
            "service": meshgate_host(policy),
            "port": policy.mesh.extauthz_port,
            "timeout": proto_duration(ext.timeout),
            "failOpen": ext.failure_mode_allow,
            # accepted since istio/api#3339 but not yet emitted by istiod (istio/istio#61558): the
            # EnvoyFilter meshgate-ext-authz-route sets it on the filter itself
            "clearRouteCache": True,
            "includeRequestBodyInCheck": {
                "maxRequestBytes": ext.max_request_bytes,
                "allowPartialMessage": False,
                "packAsBytes": True,
            },
        },
    }
    providers: list[Any] = []
    if existing is not None:
        mesh = existing.get("meshConfig", existing)
        providers = list((mesh or {}).get("extensionProviders") or [])
    names = [p.get("name") if isinstance(p, Mapping) else None for p in providers]
    if provider["name"] in names:
        providers[names.index(provider["name"])] = provider
    else:
        providers.append(provider)
    return {"meshConfig": {"extensionProviders": providers}}


def _gw_ns(policy: Policy) -> str:
    return policy.mesh.istio.gateway_namespace


def _selector(policy: Policy) -> dict[str, str]:
    return dict(policy.mesh.istio.gateway_selector)


def _gateway(policy: Policy) -> Obj:
    istio = policy.mesh.istio
    # "./host": only VirtualServices in the Gateway's own namespace bind (meshgate's one VirtualService)
    hosts = [f"./{host}" for host in istio.hosts]
    server = {"port": {"number": istio.port, "name": "http", "protocol": "HTTP"}, "hosts": hosts}
    spec = {"selector": _selector(policy), "servers": [server]}
    return {
        "apiVersion": _NET,
        "kind": "Gateway",
        "metadata": metadata(GATEWAY_NAME, _gw_ns(policy)),
        "spec": spec,
    }


# --- routing -------------------------------------------------------------------------------------


def _base_matches(model: Model) -> list[Obj]:
    """How a request is recognised as this model's: its REST path, or the header extauthz sets."""
    by_header: Obj = {"headers": {contract.MODEL_HEADER: {"exact": model.name}}}
    if model.protocol == "v2-rest":
        prefix = f"/v2/models/{model.name}"
        return [{"uri": {"exact": prefix}}, {"uri": {"prefix": prefix + "/"}}, by_header]
    return [by_header]


def _destination(model: Model, version: str) -> Obj:
    return {"host": model_host(model), "subset": _subset(version), "port": {"number": model_port(model)[1]}}


def _subset(version: str) -> str:
    """A version's subset name: Istio takes a DNS-1123 label only (a version `v1_0` or `v1.1` is not)."""
    return version if _LABEL.match(version) else k8s_name(version)


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


def model_routes(model: Model) -> list[Obj]:
    """The model's routes: one per A/B entry (base matches AND its header), then the weighted canary."""
    base = _base_matches(model)
    http: list[Obj] = []
    for i, ab in enumerate(model.ab):
        matches = [{**m, "headers": {**m.get("headers", {}), ab.header: {"exact": ab.value}}} for m in base]
        http.append(_http_route(model, route_name(model, f"ab-{i}"), matches, [(ab.version, 100)]))
    weights = [(v.name, v.weight) for v in model.versions if v.weight]
    http.append(_http_route(model, route_name(model, "canary"), base, weights))
    return http


def _no_route() -> Obj:
    """The last route: whatever no model route matches, answered 404 after ext_authz ran on it."""
    return {
        "name": NO_ROUTE,
        "directResponse": {"status": 404, "body": {"string": contract.NO_ROUTE_BODY}},
        "headers": {"response": {"set": {"content-type": "application/json"}}},
    }


def _virtual_service(policy: Policy) -> Obj:
    http = [route for model in policy.models for route in model_routes(model)]
    http.append(_no_route())
    spec = {"hosts": list(policy.mesh.istio.hosts), "gateways": [GATEWAY_NAME], "http": http}
    meta = metadata(GATEWAY_NAME, _gw_ns(policy))
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
    subsets = [{"name": _subset(v.name), "labels": {LABEL_VERSION: v.name}} for v in model.versions]
    spec = {"host": model_host(model), "trafficPolicy": traffic, "subsets": subsets}
    meta = metadata(model_name(model), model_namespace(model), model_labels(model))
    return {"apiVersion": _NET, "kind": "DestinationRule", "metadata": meta, "spec": spec}


# --- security ------------------------------------------------------------------------------------


def _ext_authz(policy: Policy) -> Obj:
    """ext_authz on every request: one empty rule (or every path but the public ones)."""
    rule: Obj = {}
    if contract.PUBLIC_PATHS:
        rule = {"to": [{"operation": {"notPaths": list(contract.PUBLIC_PATHS)}}]}
    spec = {
        "selector": {"matchLabels": _selector(policy)},
        "action": "CUSTOM",
        "provider": {"name": policy.mesh.istio.provider},
        "rules": [rule],
    }
    meta = metadata("meshgate-ext-authz", _gw_ns(policy))
    return {"apiVersion": _SEC, "kind": "AuthorizationPolicy", "metadata": meta, "spec": spec}


def _policy(name: str, namespace: str, action: str, namespaces: list[str]) -> Obj:
    spec = {"action": action, "rules": [{"from": [{"source": {"namespaces": namespaces}}]}]}
    meta = metadata(name, namespace)
    return {"apiVersion": _SEC, "kind": "AuthorizationPolicy", "metadata": meta, "spec": spec}


def _isolation(policy: Policy) -> list[Obj]:
    """Only in namespaces the policy declares: tenants reach models only through the gateway, and never
    each other's namespaces; a model namespace accepts only mTLS (STRICT)."""
    gateway_ns, meshgate_ns = _gw_ns(policy), policy.mesh.namespace
    tenant_nss = declared_tenant_namespaces(policy)
    model_nss = declared_model_namespaces(policy)
    objs: list[Obj] = []
    for ns in tenant_nss:
        allowed = sorted({ns, gateway_ns, meshgate_ns})
        objs += tenant_objects(ns, allowed)
        objs.append(_policy("meshgate-tenant-isolation", ns, "ALLOW", allowed))
    serverless = {
        model_namespace(m) for m in policy.models for v in m.versions if v.deployment_mode == "Knative"
    }
    for ns in model_nss:
        # Knative's activator sits in front of scaled-to-zero (Knative mode) InferenceServices
        extra = {"knative-serving"} if ns in serverless else set()
        objs.append(namespace(ns))
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
