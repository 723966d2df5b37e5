"""`meshgate explain`: what meshgate would do with one request, and why.

The code that serves, asked once, counting nothing:

- **extauthz**: `decide` on the compiled AuthzTable (uncached), and the CheckResponse the service
  would send (`check_response`): identity, decision and code, model, version and tokens, the headers
  set for the upstream and the metadata the rate limiter reads.
- **xds**: the gateway listener and route configuration meshgate compiled (the live snapshot when a
  running meshgate is asked), read by `meshgate.xds.match`: the client's x-meshgate-* headers removed,
  the route before ext_authz (it may disable the check) and after it (ext_authz clears the route cache),
  its clusters and weights, shadow and direct responses, and the rate limit descriptors it sends.
- **ratelimit**: each descriptor matched against the limiter's config (the rule: quota, limit, window,
  counter key). Asked of a running meshgate, each is also checked against the live counters: on a
  limiter of its own sharing the live store, config and settings, as a `check` phase (the hits are
  tested, nothing is added), so neither the counters nor the metrics move.

A credential in the request is used, never echoed: the explanation names the credential's kind and id
(`api_key:<id>`, `jwt:<issuer>`) as the audit line does.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format  # type: ignore[import-untyped]

from . import contract
from .extauthz.answers import check_response
from .extauthz.core import decide
from .extauthz.jwks import JwksRefresher
from .extauthz.request import CheckInput, Decision, Unavailable
from .extauthz.table import AuthzTable, compile_table
from .extauthz.target import OPENAI_PREFIXES
from .policy.model import Policy
from .ratelimit.compile import compile_policy
from .ratelimit.config import merge_domains
from .ratelimit.core import Descriptor, Limiter, Request, Status
from .ratelimit.keys import counter_base
from .ratelimit.metrics import RateLimitMetrics
from .ratelimit.service import settings_of
from .ratelimit.store import MemoryStore
from .xds import compile_snapshot
from .xds._names import LISTENER, ROUTE_CONFIG
from .xds._types import LISTENER as LISTENER_TYPE
from .xds._types import ROUTE as ROUTE_TYPE
from .xds.match import EXTAUTHZ_FILTER, Routed, Unknown, descriptors, gateway_of, route
from .xds.snapshot import Snapshot

__all__ = ["HttpRequest", "QuotaRow", "Sources", "explain", "quota_usage", "render", "sources_from_policy"]


@dataclass(frozen=True)
class HttpRequest:
    """A request as a client sends it: a body goes with its content-length unless the headers say
    otherwise (a content-length or transfer-encoding of their own)."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes = b""


@dataclass(frozen=True)
class Sources:
    """What an explanation reads: the objects the services serve with."""

    policy: Policy
    table: AuthzTable
    snapshot: Snapshot
    limiter: Limiter
    live: bool
    """The limiter's store holds a running meshgate's counters: report what each quota has left."""


def sources_from_policy(policy: Policy) -> Sources:
    """Compile a policy as `meshgate serve` would (JWKS issuers get no keys: no fetch is made)."""
    table = compile_table(policy, remote_keys=JwksRefresher().source_for)
    domain, tree = compile_policy(policy)
    config = merge_domains({domain: ("policy", tree)})
    metrics = RateLimitMetrics(None)
    limiter = Limiter(MemoryStore(), config=config, settings=settings_of(policy), metrics=metrics)
    return Sources(policy, table, compile_snapshot(policy), limiter, live=False)


async def explain(request: HttpRequest, sources: Sources) -> dict[str, Any]:
    """The explanation, as plain data (`render` prints it; `meshgate explain --json` dumps it)."""
    gateway = gateway_of(sources.snapshot.resources[LISTENER_TYPE][LISTENER].message)
    routes = sources.snapshot.resources[ROUTE_TYPE][ROUTE_CONFIG].message
    headers = {k.lower(): v for k, v in request.headers.items()}
    if request.body and not {"content-length", "transfer-encoding"} & headers.keys():
        headers["content-length"] = str(len(request.body))
    stripped = sorted(h for h in headers if h.startswith(gateway.stripped_prefixes or ("\0",)))
    for name in stripped:
        del headers[name]
    pseudo = {":method": request.method, ":path": request.path, ":authority": headers.get("host", "")}
    out: dict[str, Any] = {
        "request": {"method": request.method, "path": request.path, "body_bytes": len(request.body),
                    "client_headers_removed": stripped},
        "identity": None, "decision": None, "model": None, "route": None, "quotas": [], "notes": [],
    }  # fmt: skip
    try:
        first = route(routes, {**headers, **pseudo})
        if first is None:
            return _outcome(out, 404, "no route matches the request (Envoy's 404)")
        if EXTAUTHZ_FILTER not in gateway.filters or not first.extauthz:
            why = f"ext_authz does not run on route {first.name}"
            out["decision"] = {"result": "not_checked", "why": why}
            return await _routed(out, first, headers, pseudo, {}, sources)
        decision = await _check(out, request, headers, sources)
        if decision is None:
            return out
        response = check_response(sources.table, decision, tuple(stripped), openai=_openai(request.path))
        if response.HasField("denied_response"):  # a denial, or an answer of extauthz's own (model list)
            status = response.denied_response.status.code or 403
            why = decision.code if not decision.allowed else "answered by extauthz (OpenAI's model list)"
            return _outcome(out, status, why)
        for option in response.ok_response.headers:
            headers[option.header.key.lower()] = option.header.value
        for name in response.ok_response.headers_to_remove:
            headers.pop(name.lower(), None)
        metadata = {contract.EXTAUTHZ_NAMESPACE: json_format.MessageToDict(response.dynamic_metadata)}
        second = route(routes, {**headers, **pseudo})  # ext_authz cleared the route cache
        if second is None:
            return _outcome(out, 404, "no route matches after ext_authz")
        return await _routed(out, second, headers, pseudo, metadata, sources)
    except Unknown as exc:
        out["notes"].append(f"not evaluated: {exc}")
        return _outcome(out, None, f"cannot say: {exc}")


def _openai(path: str) -> bool:
    return path.startswith(OPENAI_PREFIXES)


async def _check(out: dict[str, Any], request: HttpRequest, headers: dict[str, str], sources: Sources
                 ) -> Decision | None:  # fmt: skip
    req = CheckInput(method=request.method, path=request.path, headers=headers, body=request.body,
                     request_id="meshgate-explain")  # fmt: skip
    try:
        decision = decide(sources.table, req)
    except Unavailable as exc:
        allow = sources.policy.gateway.ext_authz.failure_mode_allow
        out["decision"] = {"result": "unavailable", "why": str(exc)}
        if not sources.live:
            out["notes"].append("JWKS keys are fetched by a running meshgate: ask it (--addr)")
        _outcome(out, None if allow else 403, "extauthz cannot decide; the gateway's failure mode "
                 f"({'allow' if allow else 'deny'}) applies", upstream=allow)  # fmt: skip
        return None
    who, target = decision.identity, decision.target
    if who is not None:
        out["identity"] = {"tenant": who.tenant, "user": who.user, "tier": who.tier,
                           "roles": list(who.roles), "credential": who.credential}  # fmt: skip
    if target is not None:
        out["model"] = {"kind": target.kind, "name": target.model, "version": target.version or None,
                        "tokens": target.tokens}  # fmt: skip
    out["decision"] = {"result": "allow" if decision.allowed else "deny", "code": decision.code,
                       "status": decision.status, "why": decision.message or None}  # fmt: skip
    return decision


async def _routed(
    out: dict[str, Any], found: Routed, headers: dict[str, str], pseudo: dict[str, str],
    metadata: Mapping[str, Any], sources: Sources,
) -> dict[str, Any]:  # fmt: skip
    out["route"] = {
        "name": found.name,
        "clusters": [{"cluster": c, "weight": w} for c, w in found.clusters],
        "mirrors": [{"cluster": c, "percent": p} for c, p in found.mirrors],
        "direct_response": {"status": found.direct[0], "body": found.direct[1]} if found.direct else None,
    }
    if found.direct is not None:
        return _outcome(out, found.direct[0], f"answered by the gateway (route {found.name})")
    made, notes = descriptors(found, {**headers, **pseudo}, metadata, found.clusters[0][0])
    out["notes"] += notes
    over = await _quotas(out, made, sources)
    if over:
        return _outcome(out, 429, f"over quota {over}")
    where = ", ".join(f"{c} ({w}%)" if len(found.clusters) > 1 else c for c, w in found.clusters)
    return _outcome(out, None, f"sent to {where}", upstream=True)


async def _quotas(out: dict[str, Any], made: list[Any], sources: Sources) -> str:
    """Each request-time descriptor with its rule (and, live, what is left); the name of the first
    quota that would refuse the request ("" if none, or not asked of a running meshgate)."""
    domain, limiter = sources.policy.gateway.ratelimit.domain, sources.limiter
    checked: list[tuple[tuple[tuple[str, str], ...], int]] = []
    charged: list[str] = []
    for d in made:
        entries = tuple((k, v) for k, v in d.entries if k != contract.PHASE_KEY)
        rule = limiter.config.match(domain, entries)
        if rule is None or rule.unlimited:
            if d.on_stream_done and entries and entries[0][0] == contract.USAGE_KEY:
                charged.append(f"usage {entries[0][1]} (chargeback)")
            continue
        if d.on_stream_done:
            charged.append(f"{rule.name or rule.full_key} (tokens used)")
            continue
        window = rule.window
        start = int(time.time()) // window * window
        item = {
            "quota": rule.name or rule.full_key, "descriptor": [list(e) for e in entries],
            "key": counter_base(domain, entries, window)[0] + str(start), "limit": rule.requests_per_unit,
            "window": rule.unit, "hits": 1 if d.hits is None else d.hits, "shadow": rule.shadow_mode,
        }  # fmt: skip
        out["quotas"].append(item)
        checked.append((entries, 1 if d.hits is None else d.hits))
    if charged:
        out["charged_at_stream_end"] = charged
    if not sources.live or not checked:
        return ""
    statuses = await _peek(limiter, domain, checked)
    over = ""
    for item, status in zip(out["quotas"], statuses, strict=True):
        item["remaining"], item["would_refuse"] = status.remaining, status.over_limit
        if status.over_limit and not item["shadow"] and not over:
            over = item["quota"]
    return "" if limiter.settings.shadow_mode else over


async def _peek(limiter: Limiter, domain: str, items: list[tuple[tuple[tuple[str, str], ...], int]]
                ) -> tuple[Status, ...]:  # fmt: skip
    """The live counters as a check: a limiter of its own (its own metrics and over-limit cache) on the
    live store, config and settings; every descriptor a `check` phase, so nothing is added."""
    settings = dataclasses.replace(limiter.settings, shadow_mode=False, local_cache=False)
    probe = Limiter(limiter.store, config=limiter.config, settings=settings, metrics=RateLimitMetrics(None))
    check = (contract.PHASE_KEY, contract.CHECK)
    request = Request(domain, tuple(Descriptor((*e, check), None, hits) for e, hits in items), keep=False)
    return (await probe.decide(request)).statuses


@dataclass(frozen=True)
class QuotaRow:
    """One counter of a quota as it is now (`meshgate status`)."""

    quota: str
    tenant: str | None
    model: str | None
    limit: int
    window: str
    unit: str
    used: int
    remaining: int
    per_user: bool
    shadow: bool


async def quota_usage(policy: Policy, limiter: Limiter, *, max_rows: int = 200) -> tuple[list[QuotaRow], int]:
    """Each quota's counter per tenant that lists it and per model it counts (names the policy declares,
    at most `max_rows`; how many more there are), read as `explain` reads them: a check adding nothing.
    A quota counted per user has one counter per user, not listed: its row says so (used 0)."""
    domain, plan = policy.gateway.ratelimit.domain, contract.quota_plan(policy)
    wanted: list[tuple[QuotaRow, tuple[tuple[str, str], ...]]] = []
    for quota in policy.quotas:
        keys = contract.descriptor_keys(quota)
        tenants = [t.name for t in policy.tenants if quota.name in t.quotas] if "tenant" in keys else [None]
        models: list[str | None] = [*plan.models[quota.name]] if "model" in keys else [None]
        for tenant in tenants:
            for model in models:
                limit = contract.quota_limit(policy, quota, tenant)
                row = QuotaRow(quota.name, tenant, model, limit, quota.window, quota.unit, 0, limit,
                               "user" in keys, quota.shadow_mode)  # fmt: skip
                named = [(contract.QUOTA_KEY, quota.name), ("tenant", tenant), ("model", model)]
                wanted.append((row, tuple((k, v) for k, v in named if v is not None)))
    listed = wanted[:max_rows]
    by_tag: dict[str, list[int]] = {}  # one store call per hash tag (a Redis Cluster slot)
    for i, (row, entries) in enumerate(listed):
        if not row.per_user:
            by_tag.setdefault(counter_base(domain, entries, 1)[1], []).append(i)
    rows = [row for row, _ in listed]
    for indexes in by_tag.values():
        statuses = await _peek(limiter, domain, [(listed[i][1], 0) for i in indexes])
        for i, status in zip(indexes, statuses, strict=True):
            if status.limit is not None:
                used = max(0, status.limit - status.remaining)
                left = status.remaining
                rows[i] = dataclasses.replace(rows[i], limit=status.limit, used=used, remaining=left)
    return rows, len(wanted) - len(listed)


def _outcome(out: dict[str, Any], status: int | None, why: str, *, upstream: bool = False) -> dict[str, Any]:
    """The answer: a status the gateway gives itself, or (None) the model's answer when `upstream`."""
    out["outcome"] = {"status": status, "upstream": upstream, "why": why}
    return out


# --- text ------------------------------------------------------------------------------------------


def render(x: Mapping[str, Any]) -> str:
    """The explanation as the lines `meshgate explain` prints."""
    lines = [f"request    {x['request']['method']} {x['request']['path']} ({x['request']['body_bytes']} "
             "body bytes)"]  # fmt: skip
    if x["request"]["client_headers_removed"]:
        removed = ", ".join(x["request"]["client_headers_removed"])
        lines.append(f"removed    {removed} (the gateway strips them)")
    if x["identity"]:
        i = x["identity"]
        lines.append(f"identity   tenant {i['tenant']}, user {i['user']}, tier {i['tier'] or '-'}, "
                     f"roles {', '.join(i['roles']) or '-'}, credential {i['credential']}")  # fmt: skip
    d = x["decision"]
    if d:
        code = f" {d['code']} ({d['status']})" if "code" in d else ""
        lines.append(f"decision   {d['result']}{code}" + (f": {d['why']}" if d.get("why") else ""))
    if x["model"]:
        m = x["model"]
        lines.append(f"model      {m['name'] or m['kind']}, version {m['version'] or 'by route'}, "
                     f"tokens asked {m['tokens']}")  # fmt: skip
    r = x["route"]
    if r:
        to = ", ".join(f"{c['cluster']} {c['weight']}%" for c in r["clusters"])
        if r["direct_response"]:
            to = f"direct response {r['direct_response']['status']}"
        mirror = "".join(f"; mirror {m['cluster']} {m['percent']:g}%" for m in r["mirrors"])
        lines.append(f"route      {r['name']} -> {to}{mirror}")
    for q in x["quotas"]:
        left = f", remaining {q['remaining']}" if "remaining" in q else ""
        refuse = " -> REFUSES" if q.get("would_refuse") else ""
        shadow = " (shadow)" if q["shadow"] else ""
        lines.append(f"quota      {q['quota']}{shadow}: {q['limit']}/{q['window']}, hits {q['hits']}{left}"
                     f"{refuse}; key {q['key']}")  # fmt: skip
    for charged in x.get("charged_at_stream_end", []):
        lines.append(f"at end     {charged}")
    for note in x["notes"]:
        lines.append(f"note       {note}")
    o = x["outcome"]
    status = o["status"] if o["status"] is not None else ("upstream" if o["upstream"] else "?")
    lines.append(f"outcome    {status}: {o['why']}")
    return "\n".join(lines) + "\n"
