"""Bearer JWT verification: size, header, issuer by unverified `iss`, then that issuer's keys only.

`alg: none` and any algorithm outside the issuer's allow-list are refused before a key is chosen.
`jku`, `x5u`, `jwk` and `x5c` headers are never followed: keys come only from the policy.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from typing import Any

import jwt

from ..clip import clip
from .keys import KeyEntry
from .request import Unavailable
from .table import AuthzTable, IssuerEntry

__all__ = [
    "KNOWN_ALGS",
    "NOT_COMPACT",
    "NOT_JSON_OBJECTS",
    "KeysUnavailable",
    "TokenError",
    "Verified",
    "verify_token",
]

KNOWN_ALGS = frozenset(
    {
        "RS256",
        "RS384",
        "RS512",
        "PS256",
        "PS384",
        "PS512",
        "ES256",
        "ES384",
        "EdDSA",
        "HS256",
        "HS384",
        "HS512",
    }
)
_REQUIRED = ["exp", "iss", "aud"]
NOT_JSON_OBJECTS = "header or payload is not a JSON object"
NOT_COMPACT = "not three base64url segments"
_COMPACT = re.compile(r"^([A-Za-z0-9_-]+={0,2})\.([A-Za-z0-9_-]+={0,2})\.[A-Za-z0-9_-]*={0,2}$")
_jwt = jwt.PyJWT()


class TokenError(Exception):
    """A token that does not verify. `code` is a Decision code (token_*)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class KeysUnavailable(Unavailable):
    """The issuer's keys have never been loaded: we cannot decide (-> UNAVAILABLE, not a 401)."""


Verified = tuple[IssuerEntry, Mapping[str, Any]]


def verify_token(table: AuthzTable, token: str) -> Verified:
    """Verify `token` against the table's issuers. Returns (issuer, claims) or raises TokenError."""
    if len(token) > table.auth.max_token_bytes:
        raise TokenError("token_too_large", f"token is larger than {table.auth.max_token_bytes} bytes")
    try:
        header, unverified = _peek(token)
    except (ValueError, RecursionError) as exc:
        raise TokenError("token_malformed", f"token is not a well-formed JWT: {exc}") from None
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in KNOWN_ALGS:
        shown = repr(clip(alg)) if isinstance(alg, str) else clip(repr(alg))
        raise TokenError("token_alg_not_allowed", f"algorithm {shown} is not accepted")
    iss = unverified.get("iss")
    issuer = table.issuers.get(iss) if isinstance(iss, str) else None
    if issuer is None:
        raise TokenError("token_unknown_issuer", "token issuer is not trusted")
    if alg not in issuer.algorithms:
        raise TokenError("token_alg_not_allowed", f"algorithm {alg} is not allowed for issuer {issuer.name}")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise TokenError("token_malformed", "kid must be a string")
    keys = _keys_for(issuer, alg, kid)
    try:
        claims = _decode(token, issuer, alg, keys)
    except TokenError as exc:
        if exc.code == "token_invalid_signature" and kid is not None:
            _unknown_kid(issuer, kid)  # (a key without a kid failed a token naming a key not fetched yet)
        raise
    return issuer, claims


def _peek(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and payload, unverified: only to choose the issuer and key. PyJWT parses it again, strictly,
    when it verifies (its own parser checks the alphabet one character at a time: twice is too slow)."""
    match = _COMPACT.match(token)
    if match is None:
        raise ValueError(NOT_COMPACT)
    parts = []
    for segment in match.group(1, 2):
        raw = segment.rstrip("=").encode()
        try:
            decoded = json.loads(base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4)))
        except (ValueError, RecursionError):  # (the parser's own words would be a second contract)
            decoded = None
        if not isinstance(decoded, dict):
            raise ValueError(NOT_JSON_OBJECTS)
        parts.append(decoded)
    return parts[0], parts[1]


def _keys_for(issuer: IssuerEntry, alg: str, kid: str | None) -> list[Any]:
    if issuer.secret is not None:
        return [issuer.secret.value]
    source = issuer.keys
    if source is None or source.keys is None:
        if source is not None:
            source.keys_missing()
        raise KeysUnavailable(f"keys of issuer {issuer.name} are not loaded yet")
    found: list[KeyEntry] = source.keys.candidates(kid, alg)
    if not found:
        if kid is not None and _unknown_kid(issuer, kid):
            raise TokenError("token_unknown_kid", f"no key {kid[:64]!r} for issuer {issuer.name}")
        raise TokenError("token_unknown_kid", f"no key of issuer {issuer.name} fits algorithm {alg}")
    return [k.key for k in found]


def _unknown_kid(issuer: IssuerEntry, kid: str) -> bool:
    """Whether no key of `issuer` has `kid`; if so its source is told (a refresher may fetch early)."""
    source = issuer.keys
    if source is None or source.keys is None or source.keys.has_kid(kid):
        return False
    source.unknown_kid(kid)
    return True


def _decode(token: str, issuer: IssuerEntry, alg: str, keys: list[Any]) -> Mapping[str, Any]:
    last: TokenError | None = None
    for key in keys:
        try:
            claims: dict[str, Any] = _jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=list(issuer.audiences),
                issuer=issuer.issuer,
                leeway=issuer.leeway,
                options={"require": _REQUIRED, "verify_signature": True},
            )
            return claims
        except jwt.InvalidSignatureError:
            last = TokenError("token_invalid_signature", "token signature does not verify")
            continue
        except jwt.PyJWTError as exc:
            raise _classify(exc) from None
    assert last is not None
    raise last


def _classify(exc: jwt.PyJWTError) -> TokenError:
    mapping: tuple[tuple[type[jwt.PyJWTError], str, str], ...] = (
        (jwt.ExpiredSignatureError, "token_expired", "token has expired"),
        (
            jwt.ImmatureSignatureError,
            "token_not_yet_valid",
            "token is not valid yet (nbf or iat in the future)",
        ),
        (jwt.InvalidAudienceError, "token_wrong_audience", "token audience is not accepted"),
        (jwt.InvalidIssuerError, "token_unknown_issuer", "token issuer is not trusted"),
        (jwt.MissingRequiredClaimError, "token_missing_claim", str(exc)),
        (jwt.InvalidAlgorithmError, "token_alg_not_allowed", "token algorithm is not allowed"),
        (jwt.InvalidKeyError, "token_invalid_signature", "token signature does not verify"),
        (jwt.DecodeError, "token_malformed", "token is not a well-formed JWT"),
    )
    for kind, code, message in mapping:
        if isinstance(exc, kind):
            return TokenError(code, message)
    return TokenError("token_invalid", f"token is not valid: {type(exc).__name__}")
