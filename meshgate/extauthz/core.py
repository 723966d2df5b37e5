"""The decision core: `decide(table, request) -> Decision`. No protobuf, no I/O. Token times are
checked by PyJWT against the wall clock; `Authorizer.decide(now=...)` only dates cache entries.

Order: credential (401) -> target model (400) -> caller checks (origin, tenant) -> model checks
(visibility, role, version, context limit) -> allow. `Authorizer` adds the decision cache in front.

A prompt its model's own tokenizer counts is counted after every check but the context limit, and may
be counted elsewhere: `Authorizer.begin` stops there with a `Counting` (the texts, the tokenizer),
the caller counts (`Counting.count`, e.g. in a worker thread: the service does, off the event loop)
and `Authorizer.finish` ends the decision with the count and caches it. `decide` and
`Authorizer.decide` count inline; the decisions are the same either way.

Both a bearer token and an API key in one request: refused with 401 `ambiguous_credentials`. Picking
one silently would let a proxy that injects a key (or a leaked key pasted next to a user's token) act
under an identity the caller did not mean, and the two may name different tenants.

A bearer without a dot is not a JWT (three dot-separated parts) but an API key: OpenAI's clients send
their `api_key` as `Authorization: Bearer <key>`. It is looked up like one from the API key header;
with that header present too, the request is ambiguous as above, whatever the bearer holds. (A key
with a dot in it is read as a JWT: send it in the API key header.)
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import time
from collections.abc import Mapping
from typing import Any

from .bounds import DECISION_CACHE_BYTES, DECISION_ENTRY_BYTES, clip
from .cache import DecisionCache
from .prompt import TokenCounter
from .request import CheckInput, Decision, Identity, Target
from .table import AuthzTable, IssuerEntry, ModelEntry
from .target import TargetError, resolve_target
from .tokens import TokenError, verify_token

__all__ = ["Authorizer", "Counting", "decide"]

Credential = tuple[str, str]  # ("jwt", token) or ("api_key", key)
MAX_USER_CHARS = 256  # the user id travels in a header and a log line


@dataclasses.dataclass(frozen=True, slots=True)
class Counting:
    """A decision that waits for its prompt's count by the model's tokenizer (`Authorizer.begin`)."""

    who: Identity
    target: Target  # without its texts
    model: ModelEntry
    texts: tuple[str, ...]
    counter: TokenCounter
    key: bytes = b""  # the decision cache's key ("": not cached)
    now: float = 0.0
    generation: int = 0  # the cache's, when counting began: a cache cleared since gets nothing

    @property
    def chars(self) -> int:
        return sum(map(len, self.texts))

    def count(self) -> int:
        """The prompt's tokens: the tokenizer's work (the tokenizers library releases the GIL)."""
        return self.counter.count(self.texts)


def decide(table: AuthzTable, req: CheckInput) -> Decision:
    """The whole decision for one request, uncached (a prompt counted inline)."""
    cred = _credential(table, req)
    if isinstance(cred, Decision):
        return cred
    try:
        target: Target | TargetError = resolve_target(req, table.tokenized)
    except TargetError as exc:
        target = exc
    step = _decide(table, req, cred, target)
    return _counted(step, step.count()) if isinstance(step, Counting) else step


class Authorizer:
    """A compiled table plus its decision cache. A new policy means a new Authorizer (empty cache)."""

    def __init__(
        self,
        table: AuthzTable,
        *,
        cache_bytes: int = DECISION_CACHE_BYTES,
        cache_entry_bytes: int = DECISION_ENTRY_BYTES,
    ) -> None:
        self.table = table
        self.cache = DecisionCache(
            table.auth.decision_cache_entries, max_bytes=cache_bytes, max_entry_bytes=cache_entry_bytes
        )

    def decide(self, req: CheckInput, *, now: float | None = None) -> tuple[Decision, bool]:
        """(decision, served from cache), a prompt counted inline."""
        step = self.begin(req, now=now)
        if isinstance(step, Counting):
            return self.finish(step, step.count()), False
        return step

    def begin(self, req: CheckInput, *, now: float | None = None) -> tuple[Decision, bool] | Counting:
        """(decision, served from cache), or the Counting of a prompt its model's tokenizer must count
        (then `finish` with `Counting.count()`, wherever it ran)."""
        now = time.time() if now is None else now
        cred = _credential(self.table, req)
        if isinstance(cred, Decision):
            return cred, False
        try:
            target = resolve_target(req, self.table.tokenized)
        except TargetError as exc:
            return _decided(_decide(self.table, req, cred, exc)), False
        key = _cache_key(cred, target, req.headers)
        hit = self.cache.get(key, now)
        if hit is not None:
            return hit, True
        step = _decide(self.table, req, cred, target)
        if isinstance(step, Counting):
            return dataclasses.replace(step, key=key, now=now, generation=self.cache.generation)
        self._keep(key, step, now)
        return step, False

    def finish(self, counting: Counting, tokens: int) -> Decision:
        """The decision of a Counting, its prompt `tokens` long; cached unless the cache was cleared
        since it began (a policy's or a key's change)."""
        decision = _counted(counting, tokens)
        if counting.key and counting.generation == self.cache.generation:
            self._keep(counting.key, decision, counting.now)
        return decision

    def _keep(self, key: bytes, decision: Decision, now: float) -> None:
        identity = decision.identity
        if identity is not None:
            expires = now + self.table.auth.decision_cache_ttl
            if identity.expires_at is not None:
                expires = min(expires, identity.expires_at)
            self.cache.put(key, decision, expires)


def _decided(step: Decision | Counting) -> Decision:
    assert isinstance(step, Decision)  # a target error is decided before any prompt is counted
    return step


def _decide(
    table: AuthzTable, req: CheckInput, cred: Credential, target: Target | TargetError
) -> Decision | Counting:
    identity = _authenticate(table, cred)
    if isinstance(identity, Decision):
        return identity
    if isinstance(target, TargetError):
        return Decision.deny(target.code, target.message, identity=identity)
    return _authorize(table, identity, target, req.headers)


# --- credentials --------------------------------------------------------------------------------


def _credential(table: AuthzTable, req: CheckInput) -> Credential | Decision:
    authorization = req.headers.get("authorization")
    api_key = req.headers.get(table.auth.api_key_header)
    if authorization is not None and api_key is not None:
        return Decision.deny("ambiguous_credentials", "send either a bearer token or an API key, not both")
    if api_key is not None:
        return ("api_key", api_key)
    if authorization is None:
        return Decision.deny("missing_credentials", "a bearer token or an API key is required")
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return Decision.deny("unsupported_auth_scheme", "Authorization must be 'Bearer <token>'")
    if "." not in token:  # not a JWT (header.payload.signature): an API key, as OpenAI's clients send
        return ("api_key", token)
    return ("jwt", token)


def _authenticate(table: AuthzTable, cred: Credential) -> Identity | Decision:
    kind, value = cred
    if kind == "api_key":
        return _api_key(table, value)
    try:
        issuer, claims = verify_token(table, value)
    except TokenError as exc:
        return Decision.deny(exc.code, exc.message)
    return _identity_from_claims(table, issuer, claims)


def _api_key(table: AuthzTable, key: str) -> Identity | Decision:
    digest = hashlib.sha256(key.encode()).hexdigest()
    record = table.api_keys.get(digest)
    # the dict lookup is on a SHA-256 of the key, which leaks nothing usable about the key; the
    # constant-time compare keeps it so if the lookup ever changes
    if record is None or not hmac.compare_digest(record.sha256, digest):
        return Decision.deny("invalid_api_key", "API key is not valid")
    if record.tenant not in table.tenants:
        return Decision.deny("unknown_tenant", f"tenant {clip(record.tenant)!r} is not known")
    return Identity(
        tenant=record.tenant,
        user=record.user or record.id,
        tier=table.tier_of(record.tenant),
        roles=record.roles,
        credential=f"api_key:{record.id}",
    )


def _claim(claims: Mapping[str, Any], name: str) -> Any:
    if name in claims:
        return claims[name]
    value: Any = claims
    for part in name.split("."):  # nested claims, e.g. realm_access.roles
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _identity_from_claims(
    table: AuthzTable, issuer: IssuerEntry, claims: Mapping[str, Any]
) -> Identity | Decision:
    names = issuer.claims
    tenant, user = _claim(claims, names.tenant), _claim(claims, names.user)
    if not isinstance(tenant, str) or not tenant:
        return Decision.deny("token_missing_claim", f"token has no {names.tenant!r} claim")
    if not isinstance(user, str) or not user:
        return Decision.deny("token_missing_claim", f"token has no {names.user!r} claim")
    if len(user) > MAX_USER_CHARS or not user.isprintable():
        return Decision.deny("token_invalid", f"the {names.user!r} claim is not a printable string")
    raw_roles = _claim(claims, names.roles)
    if isinstance(raw_roles, str):
        roles = tuple(raw_roles.split())
    elif isinstance(raw_roles, list | tuple):
        roles = tuple(r for r in raw_roles if isinstance(r, str))
    else:
        roles = ()
    if tenant not in table.tenants:
        return Decision.deny("unknown_tenant", f"tenant {clip(tenant)!r} is not known")
    tier = table.tier_of(tenant)
    if names.tier is not None and _claim(claims, names.tier) is not None:
        tier = _claim(claims, names.tier)
        if not isinstance(tier, str) or tier not in table.tiers:  # a list claim is not even hashable
            return Decision.deny("unknown_tier", f"tier {clip(str(tier))!r} is not known")
    exp = claims.get("exp")
    return Identity(
        tenant=tenant,
        user=user,
        tier=str(tier),
        roles=roles,
        credential=f"jwt:{issuer.name}",
        expires_at=float(exp) if isinstance(exp, int | float) else None,
    )


# --- authorization ------------------------------------------------------------------------------


def _authorize(
    table: AuthzTable, who: Identity, target: Target, headers: Mapping[str, str]
) -> Decision | Counting:
    texts = target.texts
    if texts:  # a decision (cached, logged) never holds the prompt
        target = dataclasses.replace(target, texts=())
    origin = headers.get("origin")
    tenant = table.tenants[who.tenant]
    browser = origin is not None or "sec-fetch-site" in headers
    if tenant.allowed_origins and browser and origin not in tenant.allowed_origins:
        return Decision.deny(
            "origin_forbidden",
            f"browser calls for tenant {who.tenant} only from its allowed origins",
            identity=who,
            target=target,
        )
    if target.kind == "server":
        return Decision(code="ok", identity=who, target=target)
    if target.kind == "models":
        return _listing(table, who, target)
    model = table.models.get(target.model)
    if model is None or (model.owner is not None and model.owner != who.tenant):
        # unknown and someone else's private model read the same: no oracle for private model names
        return Decision.deny(
            "model_forbidden",
            f"model {clip(target.model)!r} is not available to tenant {who.tenant}",
            identity=who,
            target=target,
        )
    versions = table.allowed_versions(who.roles, model.name)
    if versions is None:
        return Decision.deny(
            "role_forbidden", f"no role of the caller may invoke {model.name}", identity=who, target=target
        )
    if target.version and (target.version not in model.versions or target.version not in versions):
        return Decision.deny(
            "version_forbidden",
            f"version {clip(target.version)!r} of {model.name} is not available to the caller",
            identity=who,
            target=target,
        )
    if texts and model.tokenizer is not None:  # counted by the model's tokenizer, now it may be used
        return Counting(who, target, model, texts, model.tokenizer)
    return _admit(model, who, target)


def _counted(counting: Counting, prompt: int) -> Decision:
    """The decision once the model's tokenizer counted `prompt` tokens in the texts."""
    target = counting.target
    target = dataclasses.replace(target, tokens=target.tokens + prompt + (target.max_tokens or 0))
    return _admit(counting.model, counting.who, target)


def _admit(model: ModelEntry, who: Identity, target: Target) -> Decision:
    """The context limit's checks, the tokens asked for known."""
    limit = model.context_limit
    if limit is not None and target.max_tokens is not None and target.max_tokens > limit:
        return Decision.deny(
            "max_tokens_exceeds_context",
            f"max_tokens {target.max_tokens} exceeds the context limit {limit}",
            identity=who,
            target=target,
        )
    if limit is not None and target.tokens > limit:
        return Decision.deny(
            "context_limit_exceeded",
            f"about {target.tokens} tokens requested; the context limit is {limit}",
            identity=who,
            target=target,
        )
    if limit is not None and target.max_tokens is None:
        # no max_tokens: the backend may generate up to its context limit, so that is what is asked
        # for at admission (docs/llm.md); the charge at stream end is what it really used
        target = dataclasses.replace(target, tokens=max(target.tokens, limit))
    return Decision(code="ok", identity=who, target=target)


def _listing(table: AuthzTable, who: Identity, target: Target) -> Decision:
    """GET /v1/models: the OpenAI models the caller may use; /v1/models/{model}: that one, if it may."""
    listing = table.listing(who.tenant, who.roles)
    if not target.model:
        return Decision(code="ok", identity=who, target=target, listing=listing)
    if target.model in listing:
        return Decision(code="ok", identity=who, target=target, listing=(target.model,))
    return Decision.deny(  # unknown and not allowed read the same: no oracle for private model names
        "model_not_found",
        f"The model {clip(target.model)!r} does not exist or you do not have access to it.",
        identity=who,
        target=target,
    )


def _cache_key(cred: Credential, target: Target, headers: Mapping[str, str]) -> bytes:
    parts: tuple[str, ...] = (
        cred[0],
        cred[1],
        target.kind,
        target.model,
        target.version,
        str(target.tokens),
        str(target.max_tokens),
        headers.get("origin", "\x00"),
        headers.get("sec-fetch-site", "\x00"),
    )
    if target.texts:  # a prompt its model's tokenizer counts: the count depends on the text itself
        parts += target.texts
    joined = "\x1f".join(parts)
    try:
        raw = joined.encode()
    except UnicodeEncodeError:  # a lone surrogate, which JSON may hold
        raw = joined.encode("utf-8", "surrogatepass")
    return hashlib.sha256(raw).digest()
