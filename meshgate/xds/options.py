"""What the compiler needs beyond the policy: where Envoy reaches meshgate's own services.

The policy says *what* the gateway does; these options say *where* this deployment runs it
(addresses as seen from Envoy, which filters are on). They come from the serve config or flags.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CompileOptions"]


@dataclass(frozen=True, kw_only=True)
class CompileOptions:
    """Deployment facts for `compile_snapshot`.

    extauthz / ratelimit: host:port of meshgate's gRPC services as Envoy reaches them.
    enable_extauthz / enable_ratelimit: leave a filter (and its cluster) out, e.g. for routing tests.
    listener_address: the IP the gateway listener binds; None: the policy's gateway.address.
    connect_timeout: seconds for every upstream connect.
    tracing: host:port of an OTLP/gRPC collector as Envoy reaches it: the gateway then traces requests
    with OpenTelemetry there (None: no tracing); tracing_sampling: percent of requests traced.
    jwks_ca_file: the CA bundle, as Envoy sees it, that verifies an https jwks_uri Envoy fetches itself
    (gateway.enforcement native or auto; docs/native.md).
    """

    extauthz: str = "127.0.0.1:9001"
    ratelimit: str = "127.0.0.1:9002"
    enable_extauthz: bool = True
    enable_ratelimit: bool = True
    listener_address: str | None = None
    connect_timeout: float = 2.0
    tracing: str | None = None
    tracing_sampling: float = 100.0
    tracing_service_name: str = "meshgate-gateway"
    jwks_ca_file: str = "/etc/ssl/certs/ca-certificates.crt"
