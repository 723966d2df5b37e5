"""The quotas extauthz names for a request (its metadata `quotas`, which the gateway's 429 shows) are
exactly those whose descriptors, as xds puts them on the model's routes, match a rule of the rate limit
tree compiled from the same policy: one compiler's output run through the other's consumer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from meshgate import contract
from meshgate.extauthz.table import compile_table
from meshgate.policy import Policy, load_policy, parse_policy
from meshgate.ratelimit.compile import compile_policy
from meshgate.ratelimit.model import RateLimitConfig
from meshgate.xds._quotas import model_rate_limits
from tests.unit.test_ratelimit_config import POLICY as RATELIMIT_POLICY

FIXTURES = Path(__file__).parent.parent / "fixtures" / "policies"


def matched_quotas(policy: Policy, config: RateLimitConfig, domain: str, tenant: str, model: str) -> str:
    """The quotas whose request-time descriptors on `model`'s routes match a rule for `tenant`."""
    limits = model_rate_limits(policy, policy.model(model))  # type: ignore[arg-type]
    headers = {contract.TENANT_HEADER: tenant, contract.USER_HEADER: "someone", contract.MODEL_HEADER: model}
    names = []
    for limit in limits.rate_limits if limits is not None else ():
        if limit.apply_on_stream_done:
            continue  # the charge and the chargeback: sent at stream end, never refuse
        entries = []
        for action in limit.actions:
            if action.HasField("generic_key"):
                entries.append((action.generic_key.descriptor_key, action.generic_key.descriptor_value))
            else:
                entries.append((action.request_headers.descriptor_key, headers[action.request_headers.header_name]))
        entries = [e for e in entries if e[0] != contract.PHASE_KEY]
        if config.match(domain, tuple(entries)) is not None:
            names.append(entries[0][1])
    return ",".join(names)


def no_remote_keys(issuer: Any) -> Any:
    return None  # keys play no part here


@pytest.mark.parametrize("source", ["ratelimit-config", "large"])
def test_the_quotas_extauthz_names_are_those_the_limiter_counts(source: str) -> None:
    if source == "ratelimit-config":
        policy = parse_policy(RATELIMIT_POLICY)
    else:
        policy = load_policy(FIXTURES / "large.yaml")
    domain, tree = compile_policy(policy)
    config = RateLimitConfig({domain: tree})
    table = compile_table(policy, remote_keys=no_remote_keys)
    counted = 0
    for tenant in policy.tenants:
        for model in policy.models:
            expected = matched_quotas(policy, config, domain, tenant.name, model.name)
            assert table.quotas(tenant.name, model.name) == expected, (tenant.name, model.name)
            counted += "," in expected  # several quotas count it
    assert counted  # the policies have (tenant, model) pairs that several quotas count
