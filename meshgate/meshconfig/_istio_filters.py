"""The raw Envoy configuration the Istio rendering carries, as EnvoyFilter patches on the ingress gateway.

- `meshgate-ext-authz-route`:
  1. NETWORK_FILTER MERGE into the gateway's HTTP connection manager: an early header mutation that
     removes every `x-meshgate-*` header the client sent, before routing and before any filter
     (Envoy's `envoy.http.early_header_mutation.header_mutation`, built into istio-proxy: istio/proxy
     bazel/extension_config/extensions_build_config.bzl). A forged identity never reaches a route,
     a rate limit or a model, even with `failOpen`.
  2. HTTP_FILTER MERGE `clear_route_cache: true` into the ext_authz filter Istio generates for the CUSTOM
     policy, so the route is chosen again after meshgate sets x-meshgate-model. istiod merges an
     HTTP_FILTER MERGE patch into the filter's typed config (pilot/pkg/networking/core/envoyfilter/
     listener_patch.go, MergeAnyWithAny). The meshConfig provider's own `clearRouteCache` (istio/api
     #3339) is not yet carried into the filter by istiod (istio/istio#61558), hence this patch.
- `meshgate-openai-429` (with quotas and an OpenAI model): NETWORK_FILTER MERGE of the HTTP connection
  manager's `local_reply_config`: a request under OpenAI's paths that the rate limit filter refused
  (response flag RL) gets OpenAI's 429 body naming the quotas that refused it, and `Retry-After`, the
  mapper of meshgate's own gateway (meshgate/xds/_openai.py; the body is `contract.openai_429`):
  OpenAI's SDKs then raise RateLimitError with the quota in its body, not a bare "Error code: 429".
- `meshgate-ratelimit` (only with quotas): the rate limit filter before the router (as istio.io's
  "Enabling Rate Limits using Envoy"), without Envoy's own X-RateLimit headers (meshgate's rate limit
  service adds the policy's), and on each model route (HTTP_ROUTE MERGE, matched by the route's name,
  which Istio takes from the VirtualService's http[].name: networking/v1alpha3/envoy_filter.proto
  RouteMatch.name) the route's `rate_limits` in the filter's per-route config, the shape meshgate's own
  gateway uses (Envoy 1.40 keeps `hits_addend` there).

Token quotas are counted at admission with the tokens the request asks for (hits_addend = extauthz's
asked-tokens metadata), and never charged again: istio-proxy has none of the filters meshgate's own
gateway reads a response's usage with (transform, match_delegate, sse_to_metadata), so the used tokens
are unknown. Stricter than meshgate's own gateway (asked >= used), never looser; `gaps` reports it.
"""

from __future__ import annotations

from meshgate import contract

from ..policy.model import Model, Policy, Quota
from ._common import Obj, meshgate_host, metadata, proto_duration

__all__ = ["ROUTE_SEPARATOR", "envoy_filters", "route_name", "route_rate_limits"]

ROUTE_SEPARATOR = "."
_HCM_NAME = "envoy.filters.network.http_connection_manager"
_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_EARLY = "envoy.http.early_header_mutation.header_mutation"
_EARLY_TYPE = (
    "type.googleapis.com/envoy.extensions.http.early_header_mutation.header_mutation.v3.HeaderMutation"
)
_EXT_AUTHZ = "envoy.filters.http.ext_authz"
_RATELIMIT = "envoy.filters.http.ratelimit"
_RL_TYPE = "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit"
_RL_ROUTE_TYPE = "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimitPerRoute"


def route_name(model: Model, kind: str) -> str:
    """`<model>.canary`, `<model>.ab-0`: unique in the VirtualService (the kind has no dot)."""
    return f"{model.name}{ROUTE_SEPARATOR}{kind}"


def envoy_filters(policy: Policy) -> list[Obj]:
    objs = [
        _envoy_filter(policy, "meshgate-ext-authz-route", [_strip_client_headers(), _clear_route_cache()])
    ]
    if policy.quotas:
        patches = [_ratelimit_filter(policy)]
        for model in policy.models:
            limits = route_rate_limits(policy, model)
            if limits:
                patches += [_route_patch(policy, name, limits) for name in _route_names(model)]
        objs.append(_envoy_filter(policy, "meshgate-ratelimit", patches))
        if any(m.protocol == "openai" for m in policy.models):
            objs.append(_envoy_filter(policy, "meshgate-openai-429", [_openai_429()]))
    return objs


def _route_names(model: Model) -> list[str]:
    return [route_name(model, f"ab-{i}") for i in range(len(model.ab))] + [route_name(model, "canary")]


def _listener(sub_filter: str | None = None) -> Obj:
    chain: Obj = {"filter": {"name": _HCM_NAME}}
    if sub_filter is not None:
        chain["filter"]["subFilter"] = {"name": sub_filter}
    return {"filterChain": chain}


def _strip_client_headers() -> Obj:
    mutation = {"remove_on_match": {"key_matcher": {"prefix": contract.HEADER_PREFIX}}}
    early = {"name": _EARLY, "typed_config": {"@type": _EARLY_TYPE, "mutations": [mutation]}}
    value = {"typed_config": {"@type": _HCM, "early_header_mutation_extensions": [early]}}
    return {
        "applyTo": "NETWORK_FILTER",
        "match": {"context": "GATEWAY", "listener": _listener()},
        "patch": {"operation": "MERGE", "value": value},
    }


def _openai_429() -> Obj:
    """The local reply mapper of an OpenAI request refused by the rate limit filter (as `_openai`)."""
    under_openai = [
        {"header_filter": {"header": {"name": ":path", "string_match": {"prefix": prefix}}}}
        for prefix in contract.OPENAI_PREFIXES
    ]
    limited = {"response_flag_filter": {"flags": ["RL"]}}
    refused = contract.metadata(contract.RATELIMIT_NAMESPACE, contract.REFUSED_KEY)
    reset = f"%RESP({contract.RESET_HEADER})%"
    mapper = {
        "filter": {"and_filter": {"filters": [limited, {"or_filter": {"filters": under_openai}}]}},
        "body_format_override": {"json_format": contract.openai_429(refused, reset)},
        "headers_to_add": [
            {"header": {"key": "retry-after", "value": reset}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
        ],
    }
    value = {"typed_config": {"@type": _HCM, "local_reply_config": {"mappers": [mapper]}}}
    return {
        "applyTo": "NETWORK_FILTER",
        "match": {"context": "GATEWAY", "listener": _listener()},
        "patch": {"operation": "MERGE", "value": value},
    }


def _clear_route_cache() -> Obj:
    value = {
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
            "clear_route_cache": True,
        },
    }
    return {
        "applyTo": "HTTP_FILTER",
        "match": {"context": "GATEWAY", "listener": _listener(_EXT_AUTHZ)},
        "patch": {"operation": "MERGE", "value": value},
    }


def _ratelimit_filter(policy: Policy) -> Obj:
    rl = policy.gateway.ratelimit
    host = meshgate_host(policy)
    config: Obj = {
        "@type": _RL_TYPE,
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
        # no enable_x_ratelimit_headers: meshgate's rate limit service adds the policy's headers
    }
    return {
        "applyTo": "HTTP_FILTER",
        "match": {"context": "GATEWAY", "listener": _listener("envoy.filters.http.router")},
        "patch": {"operation": "INSERT_BEFORE", "value": {"name": _RATELIMIT, "typed_config": config}},
    }


def _actions(quota: Quota) -> list[Obj]:
    actions: list[Obj] = [
        {"generic_key": {"descriptor_key": contract.QUOTA_KEY, "descriptor_value": quota.name}}
    ]
    for key, header in contract.descriptor_headers(quota):
        actions.append({"request_headers": {"header_name": header, "descriptor_key": key}})
    return actions


def route_rate_limits(policy: Policy, model: Model) -> list[Obj]:
    """The rate limits on `model`'s routes: one descriptor per quota that counts it."""
    limits: list[Obj] = []
    for quota in contract.quota_plan(policy).quotas_of(policy, model.name):
        limit: Obj = {"actions": _actions(quota)}
        if quota.unit == "tokens":
            limit["hits_addend"] = {"format": contract.ASKED_TOKENS}
        limits.append(limit)
    return limits


def _route_patch(policy: Policy, name: str, limits: list[Obj]) -> Obj:
    per_route = {"@type": _RL_ROUTE_TYPE, "rate_limits": limits}
    return {
        "applyTo": "HTTP_ROUTE",
        "match": {
            "context": "GATEWAY",
            "routeConfiguration": {"portNumber": policy.mesh.istio.port, "vhost": {"route": {"name": name}}},
        },
        "patch": {"operation": "MERGE", "value": {"typed_per_filter_config": {_RATELIMIT: per_route}}},
    }


def _envoy_filter(policy: Policy, name: str, patches: list[Obj]) -> Obj:
    spec = {
        "workloadSelector": {"labels": dict(policy.mesh.istio.gateway_selector)},
        "configPatches": patches,
    }
    meta = metadata(name, policy.mesh.istio.gateway_namespace)
    return {
        "apiVersion": "networking.istio.io/v1alpha3",
        "kind": "EnvoyFilter",
        "metadata": meta,
        "spec": spec,
    }
