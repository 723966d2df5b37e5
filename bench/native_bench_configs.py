"""The static Envoy configurations and the policy of bench/native_bench.py (no processes here).

- `upstream_bootstrap`: the model stand-in, an Envoy answering every request with a direct_response 200;
  a request with `x-bench-echo` (the proof before timing) also gets the identity headers it carried
  back as `x-seen-*` response headers (`%REQ(...)%`), so the bench can prove the gateway sent them
  without a slower echo server. The timed requests carry no `x-bench-echo`: every row then gets the
  same answer (echoed headers would cost the rows that send identity ~3,700 Envoy instructions each
  to parse and forward, and raw none: bench/envoy_instructions.py).
- `front_bootstrap`: the `raw` listener (router only) and the `hand` listener, hand-written Envoy-native
  enforcement of the same policy: jwt_authn (inline JWKS, RS256, jwt cache) with the tenant and user
  claims copied into meshgate's identity headers, rbac allowing the role claim `invoker`, and a
  local_ratelimit per user (dynamic descriptors) with a limit that never refuses.
- `policy_doc`: the meshgate policy every meshgate row serves, differing only in gateway.enforcement.
"""

from __future__ import annotations

import json
import time
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from meshgate import contract
from tests.harness import bootstraps as b

ISSUER = "https://issuer.bench"
AUDIENCE = "meshgate"
TENANT, USER, ROLE, MODEL, KID = "acme", "user-1", "invoker", "bench", "bench-1"
PATH = f"/v2/models/{MODEL}/infer"
HUGE = 1_000_000_000  # per-user requests per second: a quota that never refuses
SEEN = {"tenant": "x-seen-tenant", "user": "x-seen-user", "model": "x-seen-model"}
"""Response header of the upstream -> the identity it saw (from contract.IDENTITY_HEADERS)."""
ECHO_HEADER = "x-bench-echo"
"""A request carrying it gets the SEEN headers back (the proofs only; see upstream_bootstrap)."""

_T = "type.googleapis.com/envoy.extensions.filters.http."
_JWT_PAYLOAD = "jwt_payload"


class Keys:
    """One RSA key pair: its public JWK set and RS256 tokens for the bench's identity."""

    def __init__(self) -> None:
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = RSAAlgorithm.to_jwk(self._key.public_key(), as_dict=True)
        self.jwks: dict[str, Any] = {"keys": [{**jwk, "kid": KID, "alg": "RS256", "use": "sig"}]}

    def token(self, *, user: str = USER, roles: tuple[str, ...] = (ROLE,), lifetime: float = 3600.0) -> str:
        now = int(time.time())
        claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": user, "tenant": TENANT, "roles": list(roles),
                  "iat": now, "nbf": now - 5, "exp": now + int(lifetime)}  # fmt: skip
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": KID})


def upstream_bootstrap() -> dict[str, Any]:
    echo = [
        {"header": {"key": seen, "value": f"%REQ({contract.IDENTITY_HEADERS[key]})%"}}
        for key, seen in SEEN.items()
    ]
    body = json.dumps({"model_name": MODEL, "outputs": []})
    answer = {"status": 200, "body": {"inline_string": body}}
    echoed = {
        "match": {"prefix": "/", "headers": [{"name": ECHO_HEADER, "present_match": True}]},
        "direct_response": answer,
        "response_headers_to_add": echo,
    }
    direct = {"match": {"prefix": "/"}, "direct_response": answer}
    return b.bootstrap([b.hcm_listener("upstream", [echoed, direct])], [])


def front_bootstrap(upstream_port: int, keys: Keys) -> dict[str, Any]:
    """Listeners `raw` and `hand`, both routing to the upstream Envoy."""
    cluster = b.static_cluster("upstream", "127.0.0.1", upstream_port)
    raw = b.hcm_listener("raw", [b.route("/", "upstream")])
    hand_route = {
        "match": {"prefix": f"/v2/models/{MODEL}/"},
        "route": {"cluster": "upstream", "timeout": "30s"},
        "request_headers_to_add": [{"header": {"key": contract.MODEL_HEADER, "value": MODEL}}],
    }
    filters = [_jwt_authn(keys), _rbac(), _local_ratelimit()]
    hand = b.hcm_listener("hand", [hand_route], http_filters=filters)
    hcm = hand["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["early_header_mutation_extensions"] = [_strip_identity()]  # no forged x-meshgate-* passes
    return b.bootstrap([raw, hand], [cluster])


def _strip_identity() -> dict[str, Any]:
    return {
        "name": "envoy.http.early_header_mutation.header_mutation",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.http.early_header_mutation.header_mutation.v3."
            "HeaderMutation",
            "mutations": [{"remove_on_match": {"key_matcher": {"prefix": contract.HEADER_PREFIX}}}],
        },
    }


def _jwt_authn(keys: Keys) -> dict[str, Any]:
    provider = {
        "issuer": ISSUER,
        "audiences": [AUDIENCE],
        "local_jwks": {"inline_string": json.dumps(keys.jwks)},
        "forward": False,
        "payload_in_metadata": _JWT_PAYLOAD,
        "claim_to_headers": [
            {"header_name": contract.TENANT_HEADER, "claim_name": "tenant"},
            {"header_name": contract.USER_HEADER, "claim_name": "sub"},
        ],
        "clock_skew_seconds": 30,
        "jwt_cache_config": {"jwt_cache_size": 100},
    }
    config = {
        "@type": _T + "jwt_authn.v3.JwtAuthentication",
        "providers": {"bench": provider},
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "bench"}}],
    }
    return {"name": "envoy.filters.http.jwt_authn", "typed_config": config}


def _rbac() -> dict[str, Any]:
    role = {
        "metadata": {
            "filter": "envoy.filters.http.jwt_authn",
            "path": [{"key": _JWT_PAYLOAD}, {"key": "roles"}],
            "value": {"list_match": {"one_of": {"string_match": {"exact": ROLE}}}},
        }
    }
    policy = {
        "permissions": [{"url_path": {"path": {"prefix": f"/v2/models/{MODEL}/"}}}],
        "principals": [role],
    }
    config = {"@type": _T + "rbac.v3.RBAC", "rules": {"action": "ALLOW", "policies": {ROLE: policy}}}
    return {"name": "envoy.filters.http.rbac", "typed_config": config}


def _local_ratelimit() -> dict[str, Any]:
    bucket = {"max_tokens": HUGE, "tokens_per_fill": HUGE, "fill_interval": "1s"}
    all_requests = {"runtime_key": "bench_rl", "default_value": {"numerator": 100, "denominator": "HUNDRED"}}
    config = {
        "@type": _T + "local_ratelimit.v3.LocalRateLimit",
        "stat_prefix": "hand_quota",
        "token_bucket": bucket,
        "filter_enabled": all_requests,
        "filter_enforced": all_requests,
        # one bucket per user: an entry without a value is a dynamic descriptor (Envoy >= 1.35)
        "descriptors": [{"entries": [{"key": "user"}], "token_bucket": bucket}],
        "max_dynamic_descriptors": 10000,
        "rate_limits": [
            {
                "actions": [
                    {"request_headers": {"header_name": contract.USER_HEADER, "descriptor_key": "user"}}
                ]
            }
        ],
    }
    return {"name": "envoy.filters.http.local_ratelimit", "typed_config": config}


def policy_doc(
    *,
    enforcement: str,
    gateway_port: int,
    upstream_port: int,
    jwks: dict[str, Any],
    models: int = 1,
    tenants: int = 1,
) -> dict[str, Any]:
    """One issuer (inline JWKS), one tenant, one role, one v2-rest model, a per-user quota never reached;
    with `models` > 1, as many v2-rest models in all, the timed one (MODEL) last, the role granting all
    (what a request passes in a gateway serving many models: docs/native.md "Many models"); with
    `tenants` > 1, as many tenants of the timed one's tier, half of the others' names sorting before its
    own and half after."""
    doc = {
        "version": 1,
        "gateway": {"address": "127.0.0.1", "port": gateway_port, "enforcement": enforcement},
        "issuers": [{"name": "bench", "issuer": ISSUER, "audiences": [AUDIENCE], "jwks": jwks}],
        "tenants": [{"name": TENANT, "quotas": ["per-user"]}],
        "roles": [{"name": ROLE, "models": [MODEL]}],
        "models": [
            {
                "name": MODEL,
                "protocol": "v2-rest",
                "versions": [{"name": "v1", "endpoints": [f"127.0.0.1:{upstream_port}"]}],
                "health_check": {"enabled": False},  # no probes of the stand-in during the runs
            }
        ],
        "quotas": [{"name": "per-user", "per": ["user"], "limit": HUGE, "window": "second"}],
    }
    if tenants > 1:
        others = [f"{'ab' if i % 2 else 'ad'}-{i:05d}" for i in range(1, tenants)]
        doc["tenants"] += [{"name": name, "quotas": ["per-user"]} for name in others]
    if models > 1:
        others = [{**doc["models"][0], "name": f"other-{i:03d}"} for i in range(1, models)]
        doc["models"] = [*others, *doc["models"]]
        doc["roles"] = [{"name": ROLE, "models": ["*"]}]
    return doc
