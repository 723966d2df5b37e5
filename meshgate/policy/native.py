"""What a policy enforced natively (`gateway.enforcement: native`, docs/native.md) cannot hold.

Native means no call to meshgate per request: Envoy's jwt_authn verifies tokens and a compiled decision
table (meshgate/xds/native.lua) decides. A feature that needs meshgate's own code on the request path is
refused here with its field; `enforcement: auto` accepts them and sends only those requests to extauthz.
Quota settings Envoy's local rate limits cannot hold are `meshgate.xds._native_quotas.native_quota_gaps`.
"""

from __future__ import annotations

from collections.abc import Iterator

from .errors import Path
from .model import Policy

__all__ = ["native_gaps"]

_USE_AUTO = "use gateway.enforcement auto (these requests then go to extauthz) or ext_authz"


def native_gaps(policy: Policy) -> Iterator[tuple[Path, str]]:
    """(field path, why) for every feature of `policy` that enforcement native cannot enforce."""
    for i, _key in enumerate(policy.api_keys):
        yield ("api_keys", i), (
            "native: API keys are stored hashed; Envoy's api_key_auth would hold them in plain text in its "
            f"config: {_USE_AUTO}"
        )
    for i, issuer in enumerate(policy.issuers):
        if issuer.shared_secret is not None:
            yield ("issuers", i, "shared_secret"), (
                f"native: the HMAC secret would sit in Envoy's config (and its config_dump): {_USE_AUTO}"
            )
        elif issuer.jwks is None and issuer.jwks_uri is None:
            yield ("issuers", i, "discovery"), (
                "native: Envoy's jwt_authn does not follow OIDC discovery: set jwks_uri (or jwks)"
            )
    if policy.gateway.ratelimit.admission == "extauthz":
        yield ("gateway", "ratelimit", "admission"), (
            "native: no request goes to extauthz, which would decide the admission: use ratelimit"
        )
    for i, model in enumerate(policy.models):
        if model.protocol == "openai":
            yield ("models", i, "protocol"), (
                "native: an OpenAI model is named in the JSON body and its prompt is counted by meshgate: "
                + _USE_AUTO
            )
        elif model.serves("v2-grpc"):
            field = "protocols" if model.protocols else "protocol"
            yield ("models", i, field), (
                f"native: a gRPC model is named in the protobuf body, read by meshgate: {_USE_AUTO}"
            )
