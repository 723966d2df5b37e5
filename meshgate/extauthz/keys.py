"""Verification keys: a parsed JWK set, the live holder a refresher swaps, and HMAC shared secrets.

Only public keys come from a JWK set (kty RSA, EC, OKP); a symmetric `oct` key in a JWK set is
skipped: HMAC is accepted only with a shared secret configured on the issuer itself.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jwt import PyJWK, PyJWTError

from ..policy.model import SecretRef

__all__ = [
    "KeyEntry",
    "KeySet",
    "KeySource",
    "SecretKey",
    "StaticKeys",
    "load_secret",
    "pinned_jwks",
]

log = logging.getLogger("meshgate.extauthz.keys")

# token alg -> (kty, crv or None) a key must have to verify it
_FAMILY: Mapping[str, tuple[str, str | None]] = {
    **{f"{p}{n}": ("RSA", None) for p in ("RS", "PS") for n in (256, 384, 512)},
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "EdDSA": ("OKP", "Ed25519"),
}
_DEFAULT_ALG = {
    ("RSA", None): "RS256",
    ("EC", "P-256"): "ES256",
    ("EC", "P-384"): "ES384",
    ("OKP", "Ed25519"): "EdDSA",
}


@dataclass(frozen=True, slots=True)
class KeyEntry:
    kid: str | None
    kty: str
    crv: str | None
    alg: str | None
    key: Any  # a cryptography public key object

    def fits(self, alg: str) -> bool:
        family = _FAMILY.get(alg)
        if family is None or self.alg not in (None, alg):
            return False
        return family[0] == self.kty and family[1] in (None, self.crv)


class KeySet:
    """Immutable keys of one issuer, by kid. Build with `KeySet.parse(jwks)`."""

    __slots__ = ("_by_kid", "_keys")

    def __init__(self, keys: Iterable[KeyEntry] = ()) -> None:
        self._keys = tuple(keys)
        self._by_kid: dict[str | None, list[KeyEntry]] = {}
        for entry in self._keys:
            self._by_kid.setdefault(entry.kid, []).append(entry)

    @classmethod
    def parse(cls, jwks: Mapping[str, Any], *, source: str = "jwks") -> KeySet:
        """Parse a JWK set. Keys that cannot be used are skipped with a warning; none at all is an error."""
        raw = jwks.get("keys")
        if not isinstance(raw, list | tuple):
            raise ValueError(f"{source}: not a JWK set (no 'keys' list)")
        entries = []
        for i, jwk in enumerate(raw):
            try:
                entries.append(_parse_key(jwk))
            except (PyJWTError, ValueError, TypeError) as exc:  # (PyJWKError, InvalidKeyError...)
                log.warning("%s: key %d skipped: %s", source, i, exc)
        if not entries:
            raise ValueError(f"{source}: no usable signing key (RSA, EC P-256/P-384 or Ed25519)")
        return cls(entries)

    def candidates(self, kid: str | None, alg: str) -> list[KeyEntry]:
        """Keys that may verify a token with this kid and alg: the keys with that kid, then the keys
        without one (a token without a kid: every key), each fitting the alg.

        The rule of Envoy's jwt_authn (`source/common/jwt/verify.cc`, `verifyJwtWithoutTimeChecking`:
        a key is passed over only when both it and the token name a kid and the two differ), so that a
        policy accepts the same tokens natively as here (docs/native.md): a kid is a hint to find the key
        (RFC 7515, 4.1.4), the signature is what is verified."""
        if kid is None:
            pool: Iterable[KeyEntry] = self._keys
        else:
            pool = (*self._by_kid.get(kid, ()), *self._by_kid.get(None, ()))
        return [k for k in pool if k.fits(alg)]

    def has_kid(self, kid: str) -> bool:
        return kid in self._by_kid

    def __len__(self) -> int:
        return len(self._keys)


def _parse_key(jwk: Any) -> KeyEntry:
    if not isinstance(jwk, Mapping):
        raise ValueError("not a mapping")
    if jwk.get("use") not in (None, "sig"):
        raise ValueError(f"use {jwk.get('use')!r} is not sig")
    kty, crv = jwk.get("kty"), jwk.get("crv")
    family = (kty, crv if kty != "RSA" else None)
    if family not in _DEFAULT_ALG:
        raise ValueError(f"unsupported key type kty={kty!r} crv={crv!r}")
    alg = jwk.get("alg")
    if alg is not None and alg not in _FAMILY:
        raise ValueError(f"unsupported alg {alg!r}")
    parsed = PyJWK(dict(jwk), algorithm=alg or _DEFAULT_ALG[family])
    kid = jwk.get("kid")
    return KeyEntry(kid=str(kid) if kid is not None else None, kty=str(kty), crv=crv, alg=alg, key=parsed.key)


def pinned_jwks(jwks: Mapping[str, Any], algorithms: Iterable[str]) -> list[dict[str, Any]]:
    """The keys of `jwks` as a verifier that only reads a key's `kid` and `alg` (Envoy's jwt_authn) must
    get them to accept exactly what `KeySet.candidates` accepts: one copy of each usable key per
    allowed algorithm it fits, with that `alg` (such a verifier takes any algorithm a key without one
    can verify, where the issuer allows fewer), its kid as it is (absent stays absent: both try a key
    without a kid for any token). Empty: no key fits an allowed algorithm."""
    out = []
    for jwk in jwks.get("keys", ()):
        try:
            entry = _parse_key(jwk)
        except (PyJWTError, ValueError, TypeError):
            continue  # (KeySet.parse skips it too)
        material = {k: v for k, v in jwk.items() if k not in ("alg", "kid")}
        if entry.kid is not None:
            material["kid"] = entry.kid  # (as `_parse_key` reads it: a string)
        out += [{**material, "alg": alg} for alg in algorithms if entry.fits(alg)]
    return out


class KeySource:
    """Where an issuer's current keys are read on each request. `keys` is None until first loaded."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.keys: KeySet | None = None
        self.on_unknown_kid: Callable[[str], None] | None = None
        self.on_keys_missing: Callable[[], None] | None = None

    def unknown_kid(self, kid: str) -> None:
        if self.on_unknown_kid is not None:
            self.on_unknown_kid(kid)

    def keys_missing(self) -> None:
        """A token for this issuer came while it has no keys at all (a refresher may fetch early)."""
        if self.on_keys_missing is not None:
            self.on_keys_missing()


class StaticKeys(KeySource):
    """An inline JWK set from the policy."""

    def __init__(self, name: str, jwks: Mapping[str, Any]) -> None:
        super().__init__(name)
        self.keys = KeySet.parse(jwks, source=name)


class SecretKey:
    """An HMAC shared secret. Never printed."""

    __slots__ = ("value",)

    def __init__(self, value: bytes) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "SecretKey(<redacted>)"


def load_secret(ref: SecretRef, *, what: str) -> SecretKey:
    """Read a shared secret from its environment variable or file (at policy load, not per request)."""
    if ref.env is not None:
        value = os.environ.get(ref.env)
        if not value:
            raise ValueError(f"{what}: environment variable {ref.env} is not set")
        return SecretKey(value.encode())
    assert ref.file is not None
    try:
        data = Path(ref.file).read_bytes().strip()
    except OSError as exc:
        raise ValueError(f"{what}: cannot read {ref.file}: {exc.strerror}") from None
    if not data:
        raise ValueError(f"{what}: {ref.file} is empty")
    return SecretKey(data)
