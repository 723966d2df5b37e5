"""Support for the extauthz tests of every tier (no tests here): keys, a policy, token minting."""

from __future__ import annotations

import functools
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler
from typing import Any, Self

import jwt
import yaml
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from meshgate.extauthz.keys import KeySource
from meshgate.extauthz.table import AuthzTable, compile_table
from meshgate.policy import Policy, parse_policy
from tests.harness.http import QuietHTTPServer

ISSUER = "https://issuer.test"
AUDIENCE = "meshgate"
API_KEY = "key-acme-ci"
API_KEY_GLOBEX = "key-globex-batch"


@functools.cache
def rsa_key(name: str = "rsa") -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@functools.cache
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@functools.cache
def ed_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def public_jwks() -> dict[str, Any]:
    """The issuer's JWK set: rsa-1 (RSA), ec-1 (P-256), ed-1 (Ed25519)."""
    rsa_jwk = RSAAlgorithm.to_jwk(rsa_key().public_key(), as_dict=True)
    ec_jwk = ECAlgorithm.to_jwk(ec_key().public_key(), as_dict=True)
    ed_jwk = OKPAlgorithm.to_jwk(ed_key().public_key(), as_dict=True)
    return {
        "keys": [
            {**rsa_jwk, "kid": "rsa-1", "use": "sig"},
            {**ec_jwk, "kid": "ec-1"},
            {**ed_jwk, "kid": "ed-1"},
        ]
    }


def sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def policy_doc(*, issuer: Mapping[str, Any] | None = None, **auth: Any) -> dict[str, Any]:
    """The test policy. `issuer` replaces the key source of issuer `test` (default: inline JWKS)."""
    source = dict(issuer) if issuer is not None else {"jwks": public_jwks()}
    return {
        "version": 1,
        "auth": {"api_key_header": "x-api-key", **auth},
        "issuers": [
            {
                "name": "test",
                "issuer": ISSUER,
                "audiences": [AUDIENCE],
                "algorithms": ["RS256", "PS256", "ES256", "EdDSA"],
                "claims": {"tenant": "tenant", "user": "sub", "roles": "roles", "tier": "tier"},
                "leeway": "5s",
                **source,
            }
        ],
        "api_keys": [
            {"id": "acme-ci", "tenant": "acme", "roles": ["invoker"], "sha256": sha256(API_KEY)},
            {"id": "globex-batch", "tenant": "globex", "user": "batch", "roles": ["classifier-only"],
             "sha256": sha256(API_KEY_GLOBEX)},
        ],
        "tiers": [{"name": "free"}, {"name": "gold", "multiplier": 10}],
        "tenants": [
            {"name": "acme", "tier": "gold", "allowed_origins": ["https://app.acme.example"]},
            {"name": "globex", "tier": "free"},
        ],
        "roles": [
            {"name": "invoker", "models": ["*"]},
            {"name": "classifier-only", "models": ["resnet"], "versions": ["v1"]},
        ],
        "models": [
            {"name": "resnet", "versions": [
                {"name": "v1", "weight": 90, "endpoints": ["127.0.0.1:9101"]},
                {"name": "v2", "weight": 10, "endpoints": ["127.0.0.1:9102"]},
            ]},
            {"name": "llama-chat", "protocol": "openai", "context_limit_tokens": 4096, "visibility": "private",
             "owner": "acme", "versions": [{"name": "v1", "endpoints": ["127.0.0.1:9201"]}]},
            {"name": "simple", "protocol": "v2-grpc", "versions": [{"name": "1", "endpoints": ["127.0.0.1:9301"]}]},
            {"name": "secret-model", "protocol": "v2-grpc", "visibility": "private", "owner": "acme",
             "versions": [{"name": "1", "endpoints": ["127.0.0.1:9302"]}]},
        ],
    }  # fmt: skip


def make_policy(doc: Mapping[str, Any] | None = None) -> Policy:
    return parse_policy(yaml.safe_dump(dict(doc or policy_doc()), sort_keys=False), "test-policy.yaml")


def make_table(doc: Mapping[str, Any] | None = None) -> AuthzTable:
    def no_remote(issuer: Any) -> KeySource:
        raise AssertionError("unit tests use inline keys")

    return compile_table(make_policy(doc), remote_keys=no_remote)


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "tenant": "acme",
        "roles": ["invoker"],
        "iat": now,
        "exp": now + 600,
        "jti": uuid.uuid4().hex,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def mint(
    alg: str = "RS256",
    *,
    kid: str | None = "rsa-1",
    key: Any = None,
    headers: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> str:
    """A signed token from the test issuer (claims() with overrides; a None override drops the claim)."""
    if key is None:
        key = {"RS": rsa_key(), "PS": rsa_key(), "ES": ec_key(), "Ed": ed_key()}[alg[:2]]
    extra = dict(headers or {})
    if kid is not None:
        extra["kid"] = kid
    return jwt.encode(claims(**overrides), key, algorithm=alg, headers=extra)


def b64(data: bytes) -> str:
    return jwt.utils.base64url_encode(data).decode()


def forge(header: Mapping[str, Any], payload: Mapping[str, Any], signature: bytes = b"") -> str:
    """A token assembled by hand (for alg none and other malformed tokens)."""
    parts = [b64(json.dumps(header).encode()), b64(json.dumps(payload).encode()), b64(signature)]
    return ".".join(parts)


class LateJwks:
    """A real JWKS HTTP server on 127.0.0.1 that starts down: its port is bound but not listening, so a
    fetch is refused (ECONNREFUSED) until `up()`. `hits` counts the JWKS requests it answered. Use as a
    context manager (shut down and joined at exit)."""

    def __init__(self, document: Mapping[str, Any] | None = None) -> None:
        self.document = dict(document or public_jwks())
        self.hits = 0
        late = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                late.hits += 1
                body = json.dumps(late.document).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("cache-control", "max-age=3600")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = QuietHTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
        self.server.server_bind()  # the port is ours, nothing listens on it yet
        self.port = int(self.server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}/jwks.json"
        self._thread: threading.Thread | None = None

    def up(self) -> None:
        self.server.server_activate()
        self._thread = threading.Thread(target=self.server.serve_forever, name="late-jwks", daemon=True)
        self._thread.start()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self.server.shutdown()
            self._thread.join(timeout=10)
        self.server.server_close()
