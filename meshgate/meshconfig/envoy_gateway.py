"""Policy -> Envoy Gateway / Envoy AI Gateway: Gateway, HTTPRoute (KServe v2 REST), GRPCRoute (Triton
gRPC), AIGatewayRoute + AIServiceBackend + Backend (OpenAI protocol), SecurityPolicy extAuth to
meshgate, BackendTrafficPolicy global rate limits on the identity headers, ReferenceGrant.

Routes live in the model's namespace and point at the per-version Services that `--target kserve`
renders, so only the SecurityPolicy -> meshgate Service reference crosses namespaces.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from ..policy.model import Model, ModelVersion, Policy, Quota, Tenant
from ._common import (
    IDENTITY_HEADERS,
    Obj,
    gateway_api_duration,
    metadata,
    model_labels,
    model_name,
    model_namespace,
    model_port,
    version_name,
)

__all__ = ["GATEWAY_NAME", "render_envoy_gateway"]

GATEWAY_NAME = "meshgate"
_GW_API = "gateway.networking.k8s.io/v1"
_EG = "gateway.envoyproxy.io/v1alpha1"
_AIGW = "aigateway.envoyproxy.io/v1beta1"
_AI_METADATA_NS = "io.envoy.ai_gateway"
_UNITS = {"second": "Second", "minute": "Minute", "hour": "Hour", "day": "Day"}
# llmRequestCosts recorded by Envoy AI Gateway; token quotas are charged the total
TOKEN_COSTS = (
    ("llm_input_token", "InputToken"),
    ("llm_output_token", "OutputToken"),
    ("llm_total_token", "TotalToken"),
)


def render_envoy_gateway(policy: Policy) -> list[Obj]:
    objs: list[Obj] = [_gateway(policy), _security_policy(policy), _reference_grant(policy)]
    rate_limit = _traffic_policy(policy)
    if rate_limit is not None:
        objs.append(rate_limit)
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


def _gateway(policy: Policy) -> Obj:
    eg = policy.mesh.envoy_gateway
    base: Obj = {"protocol": "HTTP", "port": eg.port, "allowedRoutes": {"namespaces": {"from": "All"}}}
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
    ref: Obj = {"name": version_name(model, version), "port": model_port(model)[1]}
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
    by_model = {"type": "Exact", "name": IDENTITY_HEADERS["model"], "value": model.name}
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
    if version.storage_uri:
        # KServe's Hugging Face runtime serves the model under its InferenceService name
        ref["modelNameOverride"] = version_name(model, version)
    return ref


def _ai_route(policy: Policy, model: Model) -> list[Obj]:
    """AIGatewayRoute selects the model by x-ai-eg-model (set by Envoy AI Gateway from the body)."""
    ns = model_namespace(model)
    objs: list[Obj] = []
    for version in model.versions:
        name = version_name(model, version)
        host = f"{name}.{ns}.svc.cluster.local"
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
        # the model is named in the body: send it, and pick the route again after meshgate's answer
        ext_auth["bodyToExtAuth"] = {"maxRequestBytes": ext.max_request_bytes}
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


def _models_regex(policy: Policy, quota: Quota) -> str:
    """An RE2 alternation of the model names the quota's globs match (names use [A-Za-z0-9_.-])."""
    names = sorted({m.name for m in policy.models for g in quota.models if fnmatchcase(m.name, g)})
    return "^(" + "|".join(n.replace(".", "\\.") for n in names) + ")$"


def _rule(policy: Policy, tenant: Tenant, quota: Quota) -> Obj:
    tier = policy.tier(tenant.tier) if tenant.tier else None
    limit = max(1, round(quota.limit * (tier.multiplier if tier else 1.0)))
    headers: list[Obj] = [{"name": IDENTITY_HEADERS["tenant"], "type": "Exact", "value": tenant.name}]
    if "user" in quota.per:
        headers.append({"name": IDENTITY_HEADERS["user"], "type": "Distinct"})
    if quota.models != ("*",):
        headers.append(
            {
                "name": IDENTITY_HEADERS["model"],
                "type": "RegularExpression",
                "value": _models_regex(policy, quota),
            }
        )
    elif "model" in quota.per:
        headers.append({"name": IDENTITY_HEADERS["model"], "type": "Distinct"})
    rule: Obj = {
        "clientSelectors": [{"headers": headers}],
        "limit": {"requests": limit, "unit": _UNITS[quota.window]},
    }
    if quota.unit == "tokens":
        rule["cost"] = {
            "request": {"from": "Number", "number": 0},
            "response": {
                "from": "Metadata",
                "metadata": {"namespace": _AI_METADATA_NS, "key": "llm_total_token"},
            },
        }
    if quota.shadow_mode:
        rule["shadowMode"] = True
    return rule


def _traffic_policy(policy: Policy) -> Obj | None:
    rules = []
    for tenant in sorted(policy.tenants, key=lambda t: t.name):
        for quota_name in tenant.quotas:
            quota = next(q for q in policy.quotas if q.name == quota_name)
            rules.append(_rule(policy, tenant, quota))
    if not rules:
        return None
    rate_limit: Obj = {"type": "Global", "global": {"rules": rules}}
    spec = {"targetRefs": _gateway_target(), "rateLimit": rate_limit}
    return {
        "apiVersion": _EG,
        "kind": "BackendTrafficPolicy",
        "metadata": metadata("meshgate-rate-limit", _ns(policy)),
        "spec": spec,
    }
