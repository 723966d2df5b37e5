"""The gateway listener: HTTP/1.1 + h2c, ext_authz -> ratelimit -> [LLM usage] -> router, routes over RDS."""

from __future__ import annotations

from envoy.config.common.mutation_rules.v3 import mutation_rules_pb2
from envoy.config.core.v3 import address_pb2, extension_pb2, grpc_service_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.ratelimit.v3 import rls_pb2
from envoy.config.trace.v3 import http_tracer_pb2, opentelemetry_pb2
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2
from envoy.extensions.filters.http.ratelimit.v3 import rate_limit_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.http.early_header_mutation.header_mutation.v3 import header_mutation_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import wrappers_pb2  # type: ignore[import-untyped]

from meshgate import contract
from meshgate.contract import reads_usage
from meshgate.policy.model import GatewaySettings, GatewayTLS, Policy

from . import _names
from ._authz_http import http_service
from ._fast import bearer_copy, fast_path, identity_filter
from ._native import native_filters, undecided
from ._native_quotas import native_quota_filters, native_quotas
from ._openai import local_reply, served_name_filter
from ._pb import ADS, duration, pack
from ._quotas import model_rate_limits
from ._routes import has_served_names
from ._secrets import sds
from ._usage import usage_filters
from .options import CompileOptions

__all__ = ["gateway_listener"]

_HCM = hcm_pb2.HttpConnectionManager


def gateway_listener(policy: Policy, options: CompileOptions) -> listener_pb2.Listener:
    gateway = policy.gateway
    filters = []
    if gateway.enforcement != "ext_authz":  # decided by Envoy's own filters (docs/native.md)
        filters += native_filters(policy)
        if fast_path(policy):
            filters.append(identity_filter())  # the fast routes' identity, before every rate limit
    if options.enable_extauthz and gateway.enforcement != "native":
        filters.append(_ext_authz(gateway, options))
    openai = any(reads_usage(m) for m in policy.models)
    if options.enable_ratelimit and _calls_ratelimit(policy):
        filters.append(_ratelimit(gateway))
        if openai:
            filters += usage_filters()  # disabled here, enabled per route (see _usage)
    if has_served_names(policy):
        filters.append(served_name_filter())  # disabled here, enabled per route (see _openai)
    filters += native_quota_filters(policy)  # native quotas (docs/native.md): after every identity filter
    filters.append(
        hcm_pb2.HttpFilter(name="envoy.filters.http.router", typed_config=pack(router_pb2.Router()))
    )
    hcm = _HCM(
        stat_prefix="gateway",
        codec_type=_HCM.AUTO,
        rds=hcm_pb2.Rds(route_config_name=_names.ROUTE_CONFIG, config_source=ADS),
        http_filters=filters,
        use_remote_address=wrappers_pb2.BoolValue(value=True),
    )
    # (left out only for routing tests: MESHGATE_XDS_FILTERS=none with enforcement ext_authz)
    if options.enable_extauthz or gateway.enforcement != "ext_authz":
        hcm.early_header_mutation_extensions.append(_strip_client_identity(policy))
    if (openai and options.enable_ratelimit) or native_quotas(policy):  # (a native 429's body: _openai)
        hcm.local_reply_config.CopyFrom(local_reply())  # OpenAI's 429 (see _openai)
    if options.tracing:
        hcm.tracing.CopyFrom(_tracing(options))
    network = listener_components_pb2.Filter(
        name="envoy.filters.network.http_connection_manager", typed_config=pack(hcm)
    )
    chain = listener_components_pb2.FilterChain(filters=[network])
    if gateway.tls is not None:
        chain.transport_socket.name = "envoy.transport_sockets.tls"
        chain.transport_socket.typed_config.CopyFrom(pack(_downstream_tls(gateway.tls)))
    return listener_pb2.Listener(
        name=_names.LISTENER,
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(
                address=options.listener_address or gateway.address, port_value=gateway.port
            )
        ),
        filter_chains=[chain],
    )


def _calls_ratelimit(policy: Policy) -> bool:
    """Whether any route may call meshgate ratelimit. Native and auto: only the models with a quota left
    there or counters to charge (an idle filter still costs every request ~4 % of Envoy's instructions:
    bench/envoy_instructions.py)."""
    if policy.gateway.enforcement == "ext_authz":
        return True
    return any(model_rate_limits(policy, model) is not None for model in policy.models)


def _tracing(options: CompileOptions) -> hcm_pb2.HttpConnectionManager.Tracing:
    """OpenTelemetry to the collector at `options.tracing` (OTLP/gRPC, Envoy's own gRPC client: no
    cluster), as `tracing_service_name`. Envoy continues a client's traceparent, sends it on to
    ext_authz, ratelimit (their calls are child spans: meshgate's spans hang below them) and, with an
    upstream span of its own, to the model."""
    assert options.tracing is not None
    collector = grpc_service_pb2.GrpcService(
        google_grpc=grpc_service_pb2.GrpcService.GoogleGrpc(target_uri=options.tracing, stat_prefix="otlp")
    )
    config = opentelemetry_pb2.OpenTelemetryConfig(
        grpc_service=collector, service_name=options.tracing_service_name
    )
    provider = http_tracer_pb2.Tracing.Http(name="envoy.tracers.opentelemetry", typed_config=pack(config))
    return _HCM.Tracing(
        provider=provider,
        random_sampling=percent_pb2.Percent(value=options.tracing_sampling),
        spawn_upstream_span=wrappers_pb2.BoolValue(value=True),
    )


def _strip_client_identity(policy: Policy) -> extension_pb2.TypedExtensionConfig:
    """Every x-meshgate-* header the client sent is removed before routing and before any filter: a
    forged identity never reaches a route, a rate limit or a model, even when ext_authz fails open.
    Then, with native fast routes, the copy of Authorization jwt_authn reads (`_fast.bearer_copy`)."""
    remove = mutation_rules_pb2.HeaderMutation(
        remove_on_match=mutation_rules_pb2.HeaderMutation.RemoveOnMatch(
            key_matcher={"prefix": contract.HEADER_PREFIX}
        )
    )
    config = header_mutation_pb2.HeaderMutation(mutations=[remove])
    if fast_path(policy):
        config.mutations.append(bearer_copy(policy))
    return extension_pb2.TypedExtensionConfig(
        name="envoy.http.early_header_mutation.header_mutation", typed_config=pack(config)
    )


def _grpc(cluster: str, timeout: float) -> grpc_service_pb2.GrpcService:
    return grpc_service_pb2.GrpcService(
        envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=cluster), timeout=duration(timeout)
    )


def _ext_authz(gateway: GatewaySettings, options: CompileOptions) -> hcm_pb2.HttpFilter:
    settings = gateway.ext_authz
    if settings.transport == "http":  # (_authz_http)
        config = http_service(gateway, options)
    else:
        config = ext_authz_pb2.ExtAuthz(grpc_service=_grpc(_names.EXTAUTHZ_CLUSTER, settings.timeout))
    config.MergeFrom(
        ext_authz_pb2.ExtAuthz(
            transport_api_version=ADS.resource_api_version,
            failure_mode_allow=settings.failure_mode_allow,
            with_request_body=ext_authz_pb2.BufferSettings(
                max_request_bytes=settings.max_request_bytes,
                allow_partial_message=False,
                pack_as_bytes=settings.transport == "grpc",  # (over HTTP the body goes as it is)
            ),
            clear_route_cache=True,
        )
    )
    if gateway.enforcement == "auto":  # only for the requests the native filters left undecided
        config.filter_enabled_metadata.CopyFrom(undecided())
    return hcm_pb2.HttpFilter(name="envoy.filters.http.ext_authz", typed_config=pack(config))


def _ratelimit(gateway: GatewaySettings) -> hcm_pb2.HttpFilter:
    settings = gateway.ratelimit
    config = rate_limit_pb2.RateLimit(
        domain=settings.domain,
        timeout=duration(settings.timeout),
        failure_mode_deny=settings.failure_mode_deny,
        rate_limit_service=rls_pb2.RateLimitServiceConfig(
            grpc_service=_grpc(_names.RATELIMIT_CLUSTER, settings.timeout),
            transport_api_version=ADS.resource_api_version,
        ),
        # the rate limit headers (gateway.ratelimit.response_headers) come from meshgate ratelimit in
        # response_headers_to_add; Envoy's own X-RateLimit-* would duplicate them
        enable_x_ratelimit_headers=rate_limit_pb2.RateLimit.XRateLimitHeadersRFCVersion.OFF,
    )
    return hcm_pb2.HttpFilter(name="envoy.filters.http.ratelimit", typed_config=pack(config))


def _downstream_tls(tls: GatewayTLS) -> tls_pb2.DownstreamTlsContext:
    common = tls_pb2.CommonTlsContext(
        tls_certificate_sds_secret_configs=[sds(_names.cert_secret(tls.cert_file, tls.key_file))],
        alpn_protocols=["h2", "http/1.1"],
    )
    context = tls_pb2.DownstreamTlsContext(common_tls_context=common)
    if tls.client_ca_file:  # (the context holds a copy of `common`: change it there)
        ca = sds(_names.ca_secret(tls.client_ca_file))
        context.common_tls_context.validation_context_sds_secret_config.CopyFrom(ca)
        context.require_client_certificate.value = True
    return context
