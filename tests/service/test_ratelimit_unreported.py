"""Unreported usage: the estimate charge of a token quota (contract.USED_KEY, docs/llm.md), through the
servicer's wire path (serialized RateLimitRequest in, as Envoy sends it) and the limiter.

At stream end Envoy sends, per token quota, the charge (hits_addend = the used tokens; no descriptor
when the backend reported none) and the estimate charge (the same entries and `meshgate.used=reported`
or `none`, after `meshgate.refused=<quotas>` or `none`; hits_addend = the tokens extauthz asked for).
Reported: the used tokens are charged, the estimate ignored. Unreported: the estimate is charged and
counted in meshgate_ratelimit_usage_unreported_total. Refused (a 429: Envoy sends the stream-end
descriptors of a request its rate limit refused too): nothing is charged.
"""

from __future__ import annotations

import asyncio

import yaml
from envoy.service.ratelimit.v3 import rls_pb2
from prometheus_client import CollectorRegistry

from meshgate import contract
from meshgate.policy import parse_policy
from meshgate.ratelimit import Descriptor, Limiter, MemoryStore, Request
from meshgate.ratelimit.audit import PolicyNames
from meshgate.ratelimit.compile import compile_policy
from meshgate.ratelimit.config import merge_domains
from meshgate.ratelimit.metrics import RateLimitMetrics
from meshgate.ratelimit.service import RateLimitServicer

POLICY = {
    "version": 1,
    "tenants": [{"name": "acme", "quotas": ["tpm"]}],
    "models": [
        {"name": "chat", "protocol": "openai", "versions": [{"name": "v1", "endpoints": ["127.0.0.1:9"]}]},
    ],
    "quotas": [{"name": "tpm", "per": "tenant", "unit": "tokens", "limit": 100, "window": "hour"}],
}
IDENTITY = [(contract.QUOTA_KEY, "tpm"), ("tenant", "acme")]


def _pb(domain: str, *descriptors: tuple[list[tuple[str, str]], int]) -> bytes:
    request = rls_pb2.RateLimitRequest(domain=domain)
    for entries, hits in descriptors:
        d = request.descriptors.add()
        for key, value in entries:
            d.entries.add(key=key, value=value)
        d.hits_addend.value = hits
    return request.SerializeToString()


def _charge(used: int) -> tuple[list[tuple[str, str]], int]:
    return [*IDENTITY, (contract.PHASE_KEY, contract.CHARGE)], used


def _estimate(flag: str, asked: int, refused: str = "none") -> tuple[list[tuple[str, str]], int]:
    charge = [*IDENTITY, (contract.PHASE_KEY, contract.CHARGE)]
    return [*charge, (contract.REFUSED_ENTRY, refused), (contract.USED_KEY, flag)], asked


class Gateway:
    """A servicer on the policy's compiled tree, as `meshgate serve` runs it (the memory store)."""

    def __init__(self) -> None:
        policy = parse_policy(yaml.safe_dump(POLICY), "policy.yaml")
        self.domain, tree = compile_policy(policy)
        self.registry = CollectorRegistry()
        metrics = RateLimitMetrics(self.registry)
        limiter = Limiter(MemoryStore(), config=merge_domains({self.domain: ("policy", tree)}), metrics=metrics)
        self.servicer = RateLimitServicer(limiter, metrics, "memory")
        self.servicer.refusals.names = PolicyNames(frozenset({"tpm"}), frozenset({"acme"}), frozenset({"chat"}))

    def send(self, *descriptors: tuple[list[tuple[str, str]], int]) -> rls_pb2.RateLimitResponse:
        raw = asyncio.run(self.servicer.should_rate_limit(_pb(self.domain, *descriptors), None))  # type: ignore[arg-type]
        return rls_pb2.RateLimitResponse.FromString(raw)

    def remaining(self) -> int:
        """What a check of 0 tokens reports left of the quota."""
        check = Descriptor((*IDENTITY, (contract.PHASE_KEY, contract.CHECK)), hits_addend=0)
        decision = asyncio.run(self.servicer.limiter.decide(Request(self.domain, (check,))))
        return decision.statuses[0].remaining

    def admits(self, asked: int) -> bool:
        response = self.send(([*IDENTITY, (contract.PHASE_KEY, contract.CHECK)], asked))
        return bool(response.overall_code == rls_pb2.RateLimitResponse.OK)

    def unreported(self) -> dict[tuple[str, ...], float]:
        return {
            tuple(s.labels[k] for k in ("domain", "quota", "tenant", "model")): s.value
            for family in self.registry.collect()
            for s in family.samples
            if s.name == "meshgate_ratelimit_usage_unreported_total"
        }


def test_reported_usage_is_charged_and_the_estimate_beside_it_is_not() -> None:
    gateway = Gateway()
    response = gateway.send(_charge(30), _estimate(contract.USAGE_REPORTED, 60))
    assert response.overall_code == rls_pb2.RateLimitResponse.OK
    assert gateway.remaining() == 70  # the 30 used, not the 60 asked
    gateway.send(_charge(30), _estimate(contract.USAGE_REPORTED, 60))  # the same bytes again (kept)
    assert gateway.remaining() == 40
    assert gateway.unreported() == {}


def test_unreported_usage_is_charged_the_estimate_and_counted() -> None:
    gateway = Gateway()
    assert gateway.admits(60)
    response = gateway.send(_estimate(contract.USAGE_UNREPORTED, 60))  # no usage: Envoy sent no charge
    assert response.overall_code == rls_pb2.RateLimitResponse.OK
    assert gateway.remaining() == 40
    assert gateway.unreported() == {(gateway.domain, "tpm", "acme", "unknown"): 1.0}  # a per-tenant quota
    assert not gateway.admits(60)  # the estimate left 40: an ask of 60 no longer fits
    assert gateway.admits(40)
    response = gateway.send(_estimate(contract.USAGE_UNREPORTED, 60))  # a charge never refuses
    assert response.overall_code == rls_pb2.RateLimitResponse.OK
    assert gateway.remaining() == 0
    assert gateway.unreported() == {(gateway.domain, "tpm", "acme", "unknown"): 2.0}
    assert not gateway.admits(1)


def test_any_flag_but_reported_charges_the_estimate() -> None:
    """The flag is `reported` or Envoy's default; anything else (an older or other writer) is unreported:
    the safe side, the estimate."""
    gateway = Gateway()
    gateway.send(_estimate("17", 25))
    assert gateway.remaining() == 75


def test_the_estimate_of_a_refused_request_is_not_charged() -> None:
    gateway = Gateway()
    response = gateway.send(_estimate(contract.USAGE_UNREPORTED, 60, refused="tpm"))
    assert response.overall_code == rls_pb2.RateLimitResponse.OK
    assert gateway.remaining() == 100
    assert gateway.unreported() == {}


def test_a_charge_without_the_new_entry_counts_as_before() -> None:
    """Older configs and envoyproxy/ratelimit-style callers: the charge descriptor alone."""
    gateway = Gateway()
    gateway.send(_charge(45))
    assert gateway.remaining() == 55
    assert gateway.unreported() == {}


def test_the_used_entry_outside_a_charge_is_an_ordinary_entry() -> None:
    """Only a charge's last entry is reserved: elsewhere `meshgate.used` is a key like any other, which
    no rule of the policy matches (so nothing is counted)."""
    gateway = Gateway()
    response = gateway.send(([*IDENTITY, (contract.USED_KEY, contract.USAGE_UNREPORTED)], 500))
    assert response.overall_code == rls_pb2.RateLimitResponse.OK
    assert response.statuses[0].current_limit.requests_per_unit == 0  # no rule applied
    assert gateway.remaining() == 100
    assert gateway.unreported() == {}
