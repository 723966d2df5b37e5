"""XdsService beyond the stream protocol: debounced publishing, policy store wiring, certificate rotation."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from meshgate.policy.store import PolicyStore
from meshgate.policy.watch import Reloader
from meshgate.server import certificates_input
from meshgate.xds import CompileOptions, XdsService, compile_snapshot
from meshgate.xds._gateways import GATEWAYS_CLUSTER, gateways_assignment
from meshgate.xds._types import ENDPOINT, SECRET
from tests.harness.procs import eventually
from tests.service.test_xds_ads import BARE, run, snap
from tests.unit.test_xds_support import CertAuthority, model, policy, write_atomic, write_certs


def published(registry: CollectorRegistry) -> float:
    return registry.get_sample_value("meshgate_xds_snapshots_published_total") or 0.0


def test_bursts_of_changes_publish_once() -> None:
    async def scenario() -> None:
        registry = CollectorRegistry()
        service = XdsService(options=BARE, registry=registry, quiet=0.05, max_delay=1.0)
        service.schedule(snap({"v1": 90, "v2": 10}))  # the first one goes out at once
        assert published(registry) == 1
        last = snap({"v1": 30, "v2": 70})
        for weights in ({"v1": 80, "v2": 20}, {"v1": 70, "v2": 30}):
            service.schedule(snap(weights))
        service.schedule(last)
        assert published(registry) == 1  # nothing yet: waiting for quiet
        await eventually(
            lambda: service.cache.current is not None and service.cache.current.version == last.version
        )
        assert published(registry) == 2

    run(scenario)


def test_a_policy_that_does_not_compile_is_refused_by_the_store(tmp_path: Path) -> None:
    store = PolicyStore(tmp_path / "policy.yaml", registry=CollectorRegistry())
    service = XdsService(options=BARE, registry=CollectorRegistry())
    store.subscribe("xds", service.prepare)
    good = policy(model("a", {"v1": 100}))
    assert store.apply(good) is False or store.loaded  # apply returns False by design; the policy is live
    assert service.cache.current is not None
    tls = {"mode": "mtls", "cert_file": str(tmp_path / "missing.crt"), "key_file": "/k", "ca_file": "/ca"}
    store.apply(policy(model("a", {"v1": 100}, upstream_tls=tls)))  # unreadable files: prepare raises
    assert store.policy == good
    # (the service adds the endpoints of the gateways' local cluster, `_gateways`: none connected here)
    expected = compile_snapshot(good, BARE).replace({ENDPOINT: [(GATEWAYS_CLUSTER, gateways_assignment(()))]})
    assert service.cache.current.version == expected.version


def test_rotated_certificates_are_republished(tmp_path: Path) -> None:
    ca = CertAuthority()
    certs = write_certs(tmp_path / "tls", ca=ca)
    tls = {
        "mode": "mtls",
        "cert_file": str(certs["client_cert"]),
        "key_file": str(certs["client_key"]),
        "ca_file": str(certs["ca"]),
    }
    p = policy(model("a", {"v1": 100}, upstream_tls=tls))

    def chain(service: XdsService) -> bytes:
        assert service.cache.current is not None
        secrets = [r.message for r in service.cache.current[SECRET].values()]
        return next(
            bytes(s.tls_certificate.certificate_chain.inline_bytes)
            for s in secrets
            if s.HasField("tls_certificate")
        )

    async def scenario() -> None:
        service = XdsService(options=CompileOptions(), registry=CollectorRegistry(), quiet=0.01)
        service.prepare(p)()
        assert sorted(service.certificate_paths()) == sorted(str(certs[k]) for k in ("client_cert", "client_key", "ca"))
        reloader = Reloader([certificates_input(service)], settle=0.05)  # as meshgate serve wires it
        await service.start()
        await reloader.run()
        try:
            assert chain(service) == certs["client_cert"].read_bytes()
            cert, key, _ = ca.issue("client", ["meshgate-gateway"])
            write_atomic(certs["client_key"], key)
            # the watcher may not be watching yet when run() returns: write again until it is seen
            for _ in range(20):
                write_atomic(certs["client_cert"], cert)
                with contextlib.suppress(AssertionError):
                    await eventually(lambda: chain(service) == cert, timeout=0.5)
                    break
            assert chain(service) == cert
        finally:
            await reloader.stop()
            await service.stop()

    run(scenario)


@pytest.mark.parametrize("filters", ["none", "extauthz", "extauthz,ratelimit"])
def test_options_from_the_environment(filters: str) -> None:
    from meshgate.xds.options import options_from_env

    options = options_from_env(
        {"extauthz": "0.0.0.0:9001", "ratelimit": "10.1.2.3:9002"},
        {"MESHGATE_XDS_FILTERS": filters, "MESHGATE_XDS_RATELIMIT": "rl.example:81"},
    )
    assert options.extauthz == "127.0.0.1:9001"
    assert options.ratelimit == "rl.example:81"
    assert options.enable_extauthz == ("extauthz" in filters)
    assert options.enable_ratelimit == ("ratelimit" in filters)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("MESHGATE_XDS_FILTERS", "bogus", "is not extauthz, ratelimit, both, or none"),
        ("MESHGATE_XDS_FILTERS", "extauthz,none", "is not extauthz, ratelimit, both, or none"),
        ("MESHGATE_XDS_TRACING_SAMPLING", "500", "is not a percent from 0 to 100"),
        ("MESHGATE_XDS_TRACING_SAMPLING", "x", "is not a percent from 0 to 100"),
    ],
)
def test_a_bad_xds_setting_is_refused_naming_it(name: str, value: str, message: str) -> None:
    """A filter name it does not know configured neither filter (an unguarded gateway); a sampling of
    500 % was passed to Envoy."""
    from meshgate.xds.options import options_from_env

    with pytest.raises(ValueError, match=f"{name}: '{value}' {message}"):
        options_from_env({}, {name: value})
