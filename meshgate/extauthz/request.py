"""The plain values the decision core works on: what was asked (CheckInput), who asked (Identity) and
the answer (Decision). No protobuf here: the gRPC adapter converts at the edge.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["CODES", "CheckInput", "Decision", "Identity", "Target", "Unavailable"]

# Every code a Decision can carry, with its HTTP status. Stable: clients and dashboards match on them.
CODES: Mapping[str, int] = {
    "ok": 200,
    # 401: no usable credential
    "missing_credentials": 401,
    "ambiguous_credentials": 401,
    "unsupported_auth_scheme": 401,
    "invalid_api_key": 401,
    "token_too_large": 401,
    "token_malformed": 401,
    "token_alg_not_allowed": 401,
    "token_unknown_issuer": 401,
    "token_unknown_kid": 401,
    "token_invalid_signature": 401,
    "token_expired": 401,
    "token_not_yet_valid": 401,
    "token_wrong_audience": 401,
    "token_missing_claim": 401,
    "token_invalid": 401,
    # 403: known caller, not allowed
    "unknown_tenant": 403,
    "unknown_tier": 403,
    "model_forbidden": 403,
    "role_forbidden": 403,
    "version_forbidden": 403,
    "origin_forbidden": 403,
    # 404: a model the caller may not see, asked for by name (GET /v1/models/{id}): unknown and
    # forbidden read the same
    "model_not_found": 404,
    # 400 / 413: the request itself
    "model_unresolved": 400,
    "invalid_body": 400,
    "max_tokens_exceeds_context": 400,
    "context_limit_exceeded": 413,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckInput:
    """One request as Envoy described it. Header names are lowercase."""

    method: str
    path: str
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    source: str = ""
    request_id: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Identity:
    """An authenticated caller. `credential` says how: "jwt:<issuer name>" or "api_key:<key id>"."""

    tenant: str
    user: str
    tier: str
    roles: tuple[str, ...]
    credential: str
    expires_at: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """What the request wants: the model, a pinned version, and how many tokens it may use.

    kind "models" is OpenAI's model list (`GET /v1/models`, or `/v1/models/{model}` for one), which
    extauthz answers itself. `texts` holds the prompt's strings only while the model's own tokenizer
    has to count them (the core drops them once counted: a cached decision never holds a prompt)."""

    kind: Literal["model", "server", "models"]
    model: str = ""
    version: str = ""
    tokens: int = 0
    max_tokens: int | None = None
    texts: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """The answer. `code` is "ok" for an allow, else a key of CODES; `status` is its HTTP status."""

    code: str
    message: str = ""
    identity: Identity | None = None
    target: Target | None = None
    listing: tuple[str, ...] = ()
    """For an allowed target of kind "models": the models the caller may use (OpenAI protocol)."""

    @property
    def allowed(self) -> bool:
        return self.code == "ok"

    @property
    def status(self) -> int:
        return CODES[self.code]

    @classmethod
    def deny(
        cls, code: str, message: str, *, identity: Identity | None = None, target: Target | None = None
    ) -> Decision:
        if code == "ok" or code not in CODES:
            raise ValueError(f"not a deny code: {code!r}")
        return cls(code=code, message=message, identity=identity, target=target)


class Unavailable(Exception):
    """meshgate cannot decide right now (no policy, issuer keys never loaded): gRPC UNAVAILABLE, so
    Envoy's failure_mode_allow decides. Never turned into an allow here."""
