"""The policy's gateway and mesh settings: how the gateway calls meshgate, and where things run in
Kubernetes; part of the policy model (meshgate/policy/model.py). Reference: README.md "Policy reference".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from ._fields import Count, Duration, K8sName, Name, Strict, Timeout, check_pipeline_window

__all__ = [
    "EnvoyGatewaySettings",
    "ExtAuthzSettings",
    "GatewaySettings",
    "GatewayTLS",
    "IstioSettings",
    "MeshSettings",
    "RateLimitSettings",
]

# --- gateway -----------------------------------------------------------------------------------


class ExtAuthzSettings(Strict):
    """How the gateway calls meshgate extauthz."""

    timeout: Timeout = 0.25
    """How long Envoy waits for a Check answer."""
    failure_mode_allow: bool = False
    """Let requests through when extauthz cannot answer (default: refuse)."""
    max_request_bytes: Count = 1 << 20
    """Request body bytes sent to Check (to read the model from JSON/gRPC bodies)."""
    transport: Literal["grpc", "http"] = "grpc"
    """How the gateway's Envoy calls meshgate extauthz: `grpc` (envoy.service.auth.v3, `--extauthz`'s
    port) or `http` (the same Check as HTTP/1.1, `--extauthz-http`'s port: ~1 ms less per check after
    idleness, docs/extauthz.md "Transports"). The decisions are the same."""


class RateLimitSettings(Strict):
    """How the gateway calls meshgate ratelimit."""

    domain: Name = "meshgate"
    """Rate limit domain of the policy's quotas."""
    timeout: Timeout = 0.1
    """How long Envoy waits for ShouldRateLimit."""
    failure_mode_deny: bool = True
    """Refuse requests when ratelimit cannot answer (default: refuse)."""
    response_headers: Literal["none", "x-ratelimit", "draft-03"] = "x-ratelimit"
    """none, x-ratelimit (X-RateLimit-Limit/-Remaining/-Reset) or draft-03 (RateLimit-*)."""
    shadow_mode: bool = False
    """Global shadow mode: count and report OVER_LIMIT per descriptor, but never refuse a request."""
    admission: Literal["ratelimit", "extauthz"] = "ratelimit"
    """Who decides the quotas at admission, before a request goes on: `ratelimit` (the rate limit
    filter's request-time call) or `extauthz` (the Check decides them with the same limiter and store,
    in the same process: one call to meshgate instead of two before the model; the token checks and the
    `requests` quotas of OpenAI models; docs/llm.md "Admission in the Check").
    Charges at stream end stay the rate limit filter's."""
    store_timeout: Timeout = 0.05
    """Bound on each Redis call; past it ShouldRateLimit answers UNAVAILABLE (read at start)."""
    store_pipeline_window: Annotated[Duration, AfterValidator(check_pipeline_window)] = 0.0
    """How long a command waits on an idle Redis connection for others to share its write: 0 (it is
    written at the end of the event loop turn), or whole milliseconds from 1ms to 10ms (the event
    loop's timers count milliseconds), shorter than store_timeout. Fewer writes and wake-ups under
    sustained load, at the price of up to that much latency for a call that finds the connection
    idle. Like envoyproxy/ratelimit's REDIS_PIPELINE_WINDOW; a single server over TCP or a unix
    socket only (read at start)."""
    store_pipeline_limit: int = Field(default=0, ge=0)
    """With a window: a held batch is written as soon as it holds this many commands (0: no limit).
    Like envoyproxy/ratelimit's REDIS_PIPELINE_LIMIT (read at start)."""
    near_limit_ratio: float = Field(default=0.8, gt=0, le=1)
    """Share of a limit above which a hit counts in the near_limit metric."""
    local_cache: bool = True
    """Remember exhausted counters until their window ends and refuse without a store call."""

    @model_validator(mode="after")
    def _window_within_timeout(self) -> RateLimitSettings:
        if self.store_pipeline_window and self.store_pipeline_window >= self.store_timeout:
            raise ValueError(
                f"store_pipeline_window ({self.store_pipeline_window * 1000:g}ms) must be shorter than "
                f"store_timeout ({self.store_timeout * 1000:g}ms): a held call would time out"
            )
        return self


class GatewayTLS(Strict):
    """TLS on the gateway listener (clients to Envoy); certificates over SDS, re-read when they change."""

    cert_file: str = Field(min_length=1)
    """Server certificate chain (PEM) the gateway presents."""
    key_file: str = Field(min_length=1)
    """Its private key (PEM)."""
    client_ca_file: str | None = None
    """If set, clients must present a certificate signed by this CA (PEM): mutual TLS."""


def _ip_address(value: str) -> str:
    import ipaddress

    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address (e.g. 0.0.0.0, 127.0.0.1 or ::)") from None


class GatewaySettings(Strict):
    address: Annotated[str, AfterValidator(_ip_address)] = "0.0.0.0"
    """IP address the gateway listener binds: 0.0.0.0 (every IPv4 interface, what a gateway pod needs),
    :: (IPv6), or 127.0.0.1 for a gateway reachable from this machine only (the quickstart)."""
    port: int = Field(default=8080, gt=0, lt=65536)
    """Port of the gateway listener meshgate's xDS gives Envoy."""
    ext_authz: ExtAuthzSettings = ExtAuthzSettings()
    """How the gateway calls extauthz."""
    ratelimit: RateLimitSettings = RateLimitSettings()
    """How the gateway calls ratelimit."""
    tls: GatewayTLS | None = None
    """TLS for clients of the gateway listener (HTTP/1.1 and h2 by ALPN); none: plaintext (h2c)."""
    enforcement: Literal["ext_authz", "native", "auto"] = "ext_authz"
    """Where meshgate's own gateway (xds) enforces the policy (docs/native.md). ext_authz: every request
    is decided by meshgate extauthz and counted by meshgate ratelimit (two gRPC calls). native: Envoy's own
    filters decide (jwt_authn, a compiled decision table, local rate limits meshgate sizes per gateway),
    no call to meshgate per request; a policy feature that cannot be native is an error naming its field.
    auto: native for every request that can be, extauthz and ratelimit only for those that need them
    (API keys, token quotas, prompts to count)."""
    public_server_api: tuple[Literal["live", "ready", "metadata"], ...] = ()
    """Server-level inference calls the gateway answers without credentials: any of live
    (`/v2/health/live`, gRPC ServerLive), ready (`/v2/health/ready`, ServerReady), metadata (`/v2`,
    ServerMetadata). Default: none (every call needs a credential, like a model call)."""


# --- manifests (meshgate render) --------------------------------------------------------------


class IstioSettings(Strict):
    """Where the Istio ingress gateway runs and what `meshgate render --target istio` emits for it."""

    gateway_namespace: K8sName = "istio-system"
    """Namespace of the ingress gateway pods (Gateway, EnvoyFilters and gateway policies go there)."""
    gateway_selector: Mapping[str, str] = Field(default_factory=lambda: {"istio": "ingressgateway"})
    """Labels of the ingress gateway pods."""
    hosts: tuple[str, ...] = Field(default=("*",), min_length=1)
    """Hosts the Gateway and the VirtualServices answer for."""
    port: int = Field(default=80, gt=0, lt=65536)
    """HTTP port of the Gateway server."""
    provider: K8sName = "meshgate"
    """Name of the meshConfig extensionProvider that AuthorizationPolicy CUSTOM names."""
    request_authentication: bool = False
    """Also render a RequestAuthentication from the issuers (Istio checks JWTs too)."""


class EnvoyGatewaySettings(Strict):
    """The Gateway that `meshgate render --target envoy-gateway` emits for Envoy Gateway / AI Gateway."""

    namespace: K8sName = "meshgate-gateway"
    """Namespace of the Gateway and its SecurityPolicy / BackendTrafficPolicy."""
    gateway_class: K8sName = "eg"
    """gatewayClassName of the Gateway."""
    hostnames: tuple[str, ...] = ()
    """Hostnames of the listeners and routes; empty: any."""
    port: int = Field(default=80, gt=0, lt=65536)
    """HTTP listener port."""


class MeshSettings(Strict):
    """Where meshgate itself runs in the cluster (its Service), read by every render target."""

    namespace: K8sName = "meshgate"
    """Namespace of the meshgate Service."""
    service: K8sName = "meshgate"
    """Name of the meshgate Service."""
    extauthz_port: int = Field(default=9001, gt=0, lt=65536)
    """Its ext_authz gRPC port."""
    ratelimit_port: int = Field(default=9002, gt=0, lt=65536)
    """Its rate limit gRPC port."""
    istio: IstioSettings = IstioSettings()
    """Istio target settings."""
    envoy_gateway: EnvoyGatewaySettings = EnvoyGatewaySettings()
    """Envoy Gateway / Envoy AI Gateway target settings."""
