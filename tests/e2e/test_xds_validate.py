"""Every compiled configuration is accepted by `envoy --mode validate` (as a static bootstrap)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from meshgate.policy import load_policy, parse_policy
from meshgate.xds import CompileOptions, compile_snapshot
from meshgate.xds._fast import REGEX_CHARS
from meshgate.xds._route_tree import flat_routes
from meshgate.xds._types import ROUTE
from meshgate.xds.bootstrap import XdsTLS, envoy_bootstrap
from meshgate.xds.static import static_bootstrap
from tests.harness.envoy import validate
from tests.unit.test_extauthz_support import policy_doc
from tests.unit.test_xds_compile import CASES
from tests.unit.test_xds_support import model, policy, write_certs


def accepted(snapshot_bootstrap: dict[str, object], path: Path) -> None:
    path.write_text(json.dumps(snapshot_bootstrap))
    ok, output = validate(path)
    assert ok, output


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize(
    ("filters", "enforcement"),
    [(True, "ext_authz"), (False, "ext_authz"), (True, "auto"), (True, "native")],
    ids=["filters", "bare", "auto", "native"],
)
def test_golden_cases_validate(case: str, filters: bool, enforcement: str, tmp_path: Path) -> None:
    """Every golden policy in each enforcement (native: as compiled, before validation refuses what a
    native policy cannot hold, docs/native.md: the filters Envoy gets must load either way)."""
    certs = write_certs(tmp_path / "certs")
    pol = load_policy(CASES[case])
    pol = pol.model_copy(update={"gateway": pol.gateway.model_copy(update={"enforcement": enforcement})})
    files = {
        "/etc/meshgate/tls/client.crt": certs["client_cert"].read_bytes(),
        "/etc/meshgate/tls/client.key": certs["client_key"].read_bytes(),
        "/etc/meshgate/tls/ca.crt": certs["ca"].read_bytes(),
        "/etc/meshgate/tls/gateway.crt": certs["server_cert"].read_bytes(),
        "/etc/meshgate/tls/gateway.key": certs["server_key"].read_bytes(),
        "/etc/meshgate/tls/clients-ca.crt": certs["ca"].read_bytes(),
    }
    options = CompileOptions(enable_extauthz=filters, enable_ratelimit=filters)
    accepted(static_bootstrap(compile_snapshot(pol, options, files=files)), tmp_path / "static.json")


def test_many_models_validate(tmp_path: Path) -> None:
    models = [
        model(
            f"m{i}", {"v1": 50, "v2": 50, "v3": 0}, port=10000 + 3 * i, shadow={"version": "v3", "percent": 1}
        )
        for i in range(50)
    ]
    accepted(static_bootstrap(compile_snapshot(policy(*models))), tmp_path / "static.json")


def test_many_tenants_validate(tmp_path: Path) -> None:
    """1,000 tenants of one tier, with long names: the fast routes' tenant alternations stay within the
    RE2 program size the gateway allows (`_fast.REGEX_CHARS`, `bootstrap.RUNTIME`): Envoy accepts them."""
    doc = policy_doc()
    doc["gateway"] = {"port": 8080, "enforcement": "native"}
    doc["api_keys"] = []
    doc["models"] = [m for m in doc["models"] if m.get("protocol", "v2-rest") == "v2-rest"]
    doc["tenants"] = [{"name": f"t{i:04d}.{'x' * 50}-{i % 7}", "tier": "free"} for i in range(1000)]
    doc["roles"] = [{"name": "invoker", "models": ["*"]}]
    snapshot = compile_snapshot(parse_policy(yaml.safe_dump(doc)))
    routes = flat_routes(snapshot[ROUTE]["meshgate_routes"].message.virtual_hosts[0])
    tenants = [
        m.value.string_match.safe_regex.regex
        for r in routes
        if "|fast|" in r.name
        for m in r.match.dynamic_metadata
        if m.path[-1].key == "tenant"
    ]
    assert len(tenants) > 1 and all(0 < len(t) <= REGEX_CHARS for t in tenants)  # split, as alternations
    accepted(static_bootstrap(snapshot), tmp_path / "static.json")


@pytest.mark.parametrize("sotw", [False, True], ids=["delta", "sotw"])
@pytest.mark.parametrize("tls", [False, True], ids=["plaintext", "mtls"])
def test_bootstrap_validates(sotw: bool, tls: bool, tmp_path: Path) -> None:
    certs = write_certs(tmp_path / "certs")
    to_meshgate = XdsTLS(
        ca_file=str(certs["ca"]), cert_file=str(certs["client_cert"]), key_file=str(certs["client_key"])
    )
    path = tmp_path / "bootstrap.yaml"
    path.write_text(
        envoy_bootstrap(
            "gw-1", xds="meshgate.example:18000", delta=not sotw, tls=to_meshgate if tls else None
        )
    )
    ok, output = validate(path)
    assert ok, output
