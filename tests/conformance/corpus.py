"""One policy and one corpus of requests, and what every target must do with each.

Targets: `meshgate` (meshgate's own gateway: `meshgate serve` + Envoy over xDS), `istio` (the Istio
rendering, run in Envoy as istiod would configure it), `envoy-gateway` (the Envoy Gateway rendering,
likewise). Each target has tenants of its own (`acme-<target>`, gold tier x1.4; `globex-<target>`, free)
so that their counters never meet; `owner` owns the private model.
"""

from __future__ import annotations

import functools
import hashlib
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

__all__ = [
    "CASES",
    "GOLD",
    "ISSUER",
    "TARGETS",
    "Case",
    "api_key",
    "policy_doc",
    "tenant",
    "token",
]

TARGETS = ("meshgate", "istio", "envoy-gateway")
GOLD = 1.4
ISSUER = "https://conformance.test"
USER_RPD = 4  # requests a day per user: 5 for a gold tenant (5.6 rounded down), 4 for a free one
CHAT_TOKENS = 400  # tokens a day per tenant, on the chat model
# (day windows: a test would see a window roll over only if it ran across midnight UTC)
CONTEXT = 1000


def tenant(base: str, target: str) -> str:
    return base if base == "owner" else f"{base}-{target}"


def api_key(tenant_name: str) -> str:
    return f"conformance-key-{tenant_name}"


@functools.cache
def _rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def token(tenant_name: str, user: str) -> str:
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": "meshgate",
        "sub": user,
        "tenant": tenant_name,
        "roles": ["invoker"],
        "iat": now,
        "exp": now + 600,
    }
    return jwt.encode(claims, _rsa(), algorithm="RS256", headers={"kid": "k1"})


def policy_doc(*, http_port: int, grpc_port: int, gateway_port: int) -> dict[str, Any]:
    tenants: list[dict[str, Any]] = [{"name": "owner"}]
    for target in TARGETS:
        quotas = ["user-rpd", "chat-tokens", "rest.tenant-day"]
        tenants.append({"name": tenant("acme", target), "tier": "gold", "quotas": quotas})
        tenants.append({"name": tenant("globex", target), "tier": "free", "quotas": quotas})
    jwk = {**RSAAlgorithm.to_jwk(_rsa().public_key(), as_dict=True), "kid": "k1"}
    http, grpc = [f"127.0.0.1:{http_port}"], [f"127.0.0.1:{grpc_port}"]
    return {
        "version": 1,
        "gateway": {"address": "127.0.0.1", "port": gateway_port},
        "issuers": [
            {"name": "conformance", "issuer": ISSUER, "audiences": ["meshgate"], "jwks": {"keys": [jwk]}}
        ],
        "api_keys": [
            {
                "id": f"k-{t['name']}",
                "tenant": t["name"],
                "roles": ["invoker"],
                "sha256": hashlib.sha256(api_key(t["name"]).encode()).hexdigest(),
            }
            for t in tenants
        ],
        "tiers": [{"name": "gold", "multiplier": GOLD}, {"name": "free", "multiplier": 1}],
        "tenants": tenants,
        "roles": [{"name": "invoker", "models": ["*"]}],
        "models": [
            {"name": "rest", "versions": [{"name": "v1", "endpoints": http}]},
            {
                "name": "chat",
                "protocol": "openai",
                "context_limit_tokens": CONTEXT,
                "versions": [{"name": "v1", "endpoints": http}],
            },
            {"name": "grpc", "protocol": "v2-grpc", "versions": [{"name": "v1", "endpoints": grpc}]},
            {
                "name": "secret",
                "visibility": "private",
                "owner": "owner",
                "versions": [{"name": "v1", "endpoints": http}],
            },
        ],
        "quotas": [
            {"name": "user-rpd", "per": ["tenant", "user"], "limit": USER_RPD, "window": "day"},
            {
                "name": "chat-tokens",
                "per": "tenant",
                "unit": "tokens",
                "limit": CHAT_TOKENS,
                "window": "day",
                "models": ["chat"],
            },
            {
                "name": "rest.tenant-day",
                "per": "tenant",
                "limit": 100000,
                "window": "day",
                "models": ["rest"],
            },
            {"name": "model-hourly", "per": "model", "limit": 100000, "window": "hour"},
        ],
    }


Credential = Literal["key", "jwt", "none", "bad-key"]
INFER = {"inputs": [{"name": "INPUT0", "shape": [1, 2], "datatype": "INT32", "data": [1, 2]}]}
FORGED = {"x-meshgate-tenant": "globex-forged", "x-meshgate-user": "root", "x-meshgate-tier": "gold"}


@dataclass(frozen=True)
class Case:
    """One request, and what every target must answer (`status`: HTTP status, or the gRPC status name
    for a gRPC call). `skip`: target -> why it cannot run there."""

    name: str
    path: str
    status: int | str
    credential: Credential = "key"
    who: str = "acme"
    method: str = "POST"
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    grpc_model: str | None = None  # a Triton ModelInfer call naming this model
    grpc_raw: bytes = b""  # its raw_input_contents (FP32 tensors are bytes that are not UTF-8)
    model_sees: dict[str, str] = field(default_factory=dict)  # x-meshgate-* the model must see ({t}: tenant)
    skip: dict[str, str] = field(default_factory=dict)


_SERVER_API = "only meshgate's gateway answers /v2/health/* and /v2 itself (docs/models.md); a rendered one: 404"
_AIGW = "OpenAI models run on Envoy AI Gateway's AIGatewayRoute, whose external processor cannot run here"

CASES = [
    Case("rest with an API key", "/v2/models/rest/infer", 200, body=INFER,
         model_sees={"x-meshgate-tenant": "{t}", "x-meshgate-model": "rest"}),
    Case("rest with a JWT", "/v2/models/rest/infer", 200, credential="jwt", body=INFER,
         model_sees={"x-meshgate-tenant": "{t}", "x-meshgate-user": "alice"}),
    Case("rest with forged identity headers", "/v2/models/rest/infer", 200, who="globex", body=INFER,
         headers=FORGED,
         model_sees={"x-meshgate-tenant": "{t}", "x-meshgate-user": "k-{t}", "x-meshgate-tier": "free"}),
    Case("rest without credentials", "/v2/models/rest/infer", 401, credential="none", body=INFER),
    Case("rest with an unknown key", "/v2/models/rest/infer", 401, credential="bad-key", body=INFER),
    Case("another path with a forged model header, no credentials", "/internal/anything", 401,
         credential="none", method="GET", headers={"x-meshgate-model": "rest", **FORGED}),
    Case("another path with a forged model header and a key", "/internal/anything", 400, method="GET",
         headers={"x-meshgate-model": "rest"}),
    Case("server health through the gateway", "/v2/health/ready", 200, method="GET",
         skip={"istio": _SERVER_API, "envoy-gateway": _SERVER_API}),
    Case("server health through a rendered gateway", "/v2/health/ready", 404, method="GET",
         skip={"meshgate": "meshgate's gateway answers server-level calls (the case above)"}),
    Case("server health without credentials", "/v2/health/ready", 401, method="GET", credential="none",
         skip={"istio": _SERVER_API, "envoy-gateway": _SERVER_API}),
    Case("private model of another tenant", "/v2/models/secret/infer", 403, body=INFER),
    Case("private model of its owner", "/v2/models/secret/infer", 200, who="owner", body=INFER),
    Case("openai chat named in the body", "/v1/chat/completions", 200,
         body={"model": "chat", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
         headers={"x-meshgate-model": "rest"},
         model_sees={"x-meshgate-model": "chat", "x-meshgate-tenant": "{t}"}, skip={"envoy-gateway": _AIGW}),
    Case("openai chat of an unknown model", "/v1/chat/completions", 403,
         body={"model": "nope", "messages": []}, skip={"envoy-gateway": _AIGW}),
    Case("openai chat without credentials", "/v1/chat/completions", 401, credential="none",
         body={"model": "chat", "messages": []}, skip={"envoy-gateway": _AIGW}),
    Case("triton grpc named in the body", "/inference.GRPCInferenceService/ModelInfer", "OK", grpc_model="grpc",
         who="globex", headers=FORGED,
         model_sees={"x-meshgate-model": "grpc", "x-meshgate-tenant": "{t}", "x-meshgate-tier": "free"}),
    Case("triton grpc with binary tensor bytes", "/inference.GRPCInferenceService/ModelInfer", "OK",
         grpc_model="grpc", grpc_raw=b"\x00\x00\x80\xbf\xff\xfe", model_sees={"x-meshgate-model": "grpc"}),
    Case("triton grpc without credentials", "/inference.GRPCInferenceService/ModelInfer", "UNAUTHENTICATED",
         credential="none", grpc_model="grpc"),
    Case("triton grpc of an unknown model", "/inference.GRPCInferenceService/ModelInfer", "PERMISSION_DENIED",
         grpc_model="nope"),
]  # fmt: skip
