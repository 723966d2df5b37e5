"""Every compiled configuration is accepted by `envoy --mode validate` (as a static bootstrap)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meshgate.policy import load_policy
from meshgate.xds import CompileOptions, compile_snapshot
from meshgate.xds.bootstrap import XdsTLS, envoy_bootstrap
from meshgate.xds.static import static_bootstrap
from tests.harness.envoy import validate
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
