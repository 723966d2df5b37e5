"""What the compiler needs beyond the policy: where Envoy reaches meshgate's own services.

The policy says *what* the gateway does; these options say *where* this deployment runs it
(addresses as seen from Envoy, which filters are on). They come from the serve config or flags.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CompileOptions", "options_from_env"]


@dataclass(frozen=True, kw_only=True)
class CompileOptions:
    """Deployment facts for `compile_snapshot`.

    extauthz / ratelimit: host:port of meshgate's gRPC services as Envoy reaches them; extauthz_http:
    of extauthz over HTTP (gateway.ext_authz.transport: http).
    enable_extauthz / enable_ratelimit: leave a filter (and its cluster) out, e.g. for routing tests.
    listener_address: the IP the gateway listener binds; None: the policy's gateway.address.
    connect_timeout: seconds for every upstream connect.
    tracing: host:port of an OTLP/gRPC collector as Envoy reaches it: the gateway then traces requests
    with OpenTelemetry there (None: no tracing); tracing_sampling: percent of requests traced.
    jwks_ca_file: the CA bundle, as Envoy sees it, that verifies an https jwks_uri Envoy fetches itself
    (gateway.enforcement native or auto; docs/native.md).
    fast_refresh: seconds between two compilations of the routes, with native fast routes (their iat
    bound follows the clock: `_fast`; `XdsService` recompiles them); fast_stats: the fast routes count
    their requests in Envoy's stats (`vhost.<vhost>.route.native_fast.*`; off: each costs ~1 % of Envoy's
    CPU per request).
    """

    extauthz: str = "127.0.0.1:9001"
    ratelimit: str = "127.0.0.1:9002"
    extauthz_http: str = "127.0.0.1:9003"
    enable_extauthz: bool = True
    enable_ratelimit: bool = True
    listener_address: str | None = None
    connect_timeout: float = 2.0
    tracing: str | None = None
    tracing_sampling: float = 100.0
    tracing_service_name: str = "meshgate-gateway"
    jwks_ca_file: str = "/etc/ssl/certs/ca-certificates.crt"
    fast_refresh: float = 20.0
    fast_stats: bool = False


def options_from_env(listen: dict[str, str], env: dict[str, str]) -> CompileOptions:
    """Compile options for `meshgate serve`: Envoy reaches extauthz/ratelimit where they listen
    (0.0.0.0 read as 127.0.0.1) unless MESHGATE_XDS_EXTAUTHZ / MESHGATE_XDS_RATELIMIT /
    MESHGATE_XDS_EXTAUTHZ_HTTP say otherwise;
    MESHGATE_XDS_FILTERS lists the filters to configure (default "extauthz,ratelimit"; "none" for none);
    MESHGATE_XDS_TRACING names the OTLP/gRPC collector (host:port) the gateway traces to, and
    MESHGATE_XDS_TRACING_SAMPLING the percent of requests it traces (default 100); MESHGATE_XDS_JWKS_CA the CA
    bundle, as the gateway sees it, verifying an https jwks_uri its jwt_authn fetches (docs/native.md);
    MESHGATE_XDS_FAST_REFRESH the seconds between two compilations of the native fast routes (`_fast`),
    MESHGATE_XDS_FAST_STATS (true/false) whether they count their requests."""

    def advertised(role: str) -> str:
        override = env.get(f"MESHGATE_XDS_{role.upper()}")
        if override:
            return override
        host, _, port = listen.get(role, "127.0.0.1:0").rpartition(":")
        return f"{'127.0.0.1' if host in ('', '0.0.0.0', '[::]', '::') else host}:{port}"

    raw_filters = env.get("MESHGATE_XDS_FILTERS", "extauthz,ratelimit")
    filters = {f.strip() for f in raw_filters.split(",")} - {""}
    if not filters <= {"extauthz", "ratelimit"} and filters != {"none"}:
        raise ValueError(
            f"MESHGATE_XDS_FILTERS: {raw_filters[:40]!r} is not extauthz, ratelimit, both, or none"
        )
    sampling = _number(env, "MESHGATE_XDS_TRACING_SAMPLING", 100.0, 0.0, 100.0, "a percent")
    return CompileOptions(
        extauthz=advertised("extauthz"),
        ratelimit=advertised("ratelimit"),
        extauthz_http=advertised("extauthz_http"),
        enable_extauthz="extauthz" in filters,
        enable_ratelimit="ratelimit" in filters,
        tracing=env.get("MESHGATE_XDS_TRACING") or None,
        tracing_sampling=sampling,
        jwks_ca_file=env.get("MESHGATE_XDS_JWKS_CA") or CompileOptions.jwks_ca_file,
        fast_refresh=_seconds(env, "MESHGATE_XDS_FAST_REFRESH", CompileOptions.fast_refresh, 1.0, 3600.0),
        fast_stats=_flag(env, "MESHGATE_XDS_FAST_STATS", CompileOptions.fast_stats),
    )


def _flag(env: dict[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if not raw:
        return default
    value = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(raw.lower())
    if value is None:
        raise ValueError(f"{name}: {raw[:40]!r} is not true or false")
    return value


def _seconds(env: dict[str, str], name: str, default: float, low: float, high: float) -> float:
    return _number(env, name, default, low, high, "a number of seconds")


def _number(env: dict[str, str], name: str, default: float, low: float, high: float, what: str) -> float:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not low <= value <= high:  # (nan fails too)
        raise ValueError(f"{name}: {raw[:40]!r} is not {what} from {low:g} to {high:g}")
    return value
