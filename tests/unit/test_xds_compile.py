"""The compiler: policy in, consistent Snapshot out; golden files for the example and the mesh case."""

from __future__ import annotations

from pathlib import Path

import pytest
from envoy.config.route.v3 import route_pb2

from meshgate.policy import load_policy
from meshgate.xds import CompileOptions, InconsistentSnapshot, Snapshot, compile_snapshot
from meshgate.xds._route_tree import flat_routes
from meshgate.xds._types import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET
from meshgate.xds.static import snapshot_json
from tests.golden.plugin import assert_golden, update_requested
from tests.unit.test_xds_support import EXAMPLE, GOLDEN, model, policy

CASES = {"examples_policy": EXAMPLE, **{p.name.removesuffix(".in.yaml"): p for p in GOLDEN.glob("*.in.yaml")}}


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str, request: pytest.FixtureRequest) -> None:
    snapshot = compile_snapshot(load_policy(CASES[case]))
    assert_golden(
        snapshot_json(snapshot), GOLDEN / f"{case}.out.json", update=update_requested(request.config)
    )


def routes(snapshot: Snapshot) -> list[route_pb2.Route]:
    config = snapshot[ROUTE]["meshgate_routes"].message
    return flat_routes(config.virtual_hosts[0])


def test_example_routes_canary_ab_shadow() -> None:
    snapshot = compile_snapshot(load_policy(EXAMPLE))
    by_name = {r.name: r for r in routes(snapshot)}
    assert [r.name for r in routes(snapshot) if "|pin|" not in r.name and r.HasField("route")][:3] == [
        "resnet|ab|x-experiment=b",
        "resnet|canary",
        "resnet|ab|x-experiment=b",
    ]
    canary = by_name["resnet|canary"].route
    assert [(c.name, c.weight.value) for c in canary.weighted_clusters.clusters] == [
        ("model|resnet|v1", 90),
        ("model|resnet|v2", 10),
    ]
    mirror = canary.request_mirror_policies[0]
    assert mirror.cluster == "model|resnet|v3"
    assert mirror.runtime_fraction.default_value.numerator == 50_000  # 5% of a million
    assert by_name["resnet|ab|x-experiment=b"].route.cluster == "model|resnet|v2"
    assert canary.retry_policy.num_retries.value == 2
    assert canary.timeout.seconds == 30
    assert by_name["llama-chat|canary"].route.cluster == "model|llama-chat|v1"  # one version: no weights
    assert set(snapshot[ENDPOINT]) == {
        "model|resnet|v1",
        "model|resnet|v2",
        "model|resnet|v3",
        "model|llama-chat|v1",
    }


def test_rest_routes_by_path_and_header_other_protocols_by_header_only() -> None:
    p = policy(model("a", {"v1": 100}), model("b", {"v1": 100}, protocol="v2-grpc", port=9100))
    matches = [
        (r.name, r.match.WhichOneof("path_specifier"), len(r.match.headers))
        for r in routes(compile_snapshot(p))
    ]
    assert matches == [
        ("a|body_too_large", "path_separated_prefix", 1),  # tests/unit/test_models_bodies.py
        ("a|length_required", "path_separated_prefix", 2),
        ("a|pin|v1", "path_separated_prefix", 0),  # a pinned version first (tests/unit/test_models_pins.py)
        ("a|canary", "prefix", 1),
        ("a|canary", "path_separated_prefix", 0),
        ("b|stream_forbidden", "path", 1),  # no stream_infer (tests/e2e/test_triton_stream.py)
        ("b|pin|v1", "prefix", 2),  # x-meshgate-model and x-meshgate-model-version
        ("b|canary", "prefix", 1),
        *((f"meshgate|server|{call}", "path", 0) for call in ("live", "ready", "metadata")),
        *((f"meshgate|server|grpc-{call}", "path", 0) for call in ("live", "ready", "metadata")),
        ("meshgate|grpc", "prefix", 0),  # ext_authz reads the head of a gRPC message there
        ("meshgate|no_route", "prefix", 0),  # last: lets ext_authz run for models named in the body
    ]


def test_grpc_backend_clusters_speak_http2() -> None:
    snapshot = compile_snapshot(policy(model("b", {"v1": 100}, protocol="v2-grpc")))
    options = snapshot[CLUSTER]["model|b|v1"].message.typed_extension_protocol_options
    assert "envoy.extensions.upstreams.http.v3.HttpProtocolOptions" in options


def test_filters_can_be_left_out() -> None:
    p = policy(model("a", {"v1": 100}))
    full = compile_snapshot(p)
    bare = compile_snapshot(p, CompileOptions(enable_extauthz=False, enable_ratelimit=False))
    assert {"meshgate|extauthz", "meshgate|ratelimit"} <= set(full[CLUSTER])
    assert not {"meshgate|extauthz", "meshgate|ratelimit"} & set(bare[CLUSTER])
    assert bare[LISTENER]["meshgate_gateway"].version != full[LISTENER]["meshgate_gateway"].version


def test_versions_hash_content_and_only_changed_resources_change() -> None:
    before = compile_snapshot(policy(model("a", {"v1": 90, "v2": 10}), model("b", {"v1": 100}, port=9100)))
    again = compile_snapshot(policy(model("a", {"v1": 90, "v2": 10}), model("b", {"v1": 100}, port=9100)))
    after = compile_snapshot(policy(model("a", {"v1": 50, "v2": 50}), model("b", {"v1": 100}, port=9100)))
    assert before.version == again.version
    assert before.versions[ROUTE] != after.versions[ROUTE]
    for type_url in (CLUSTER, ENDPOINT, LISTENER, SECRET):
        assert before.versions[type_url] == after.versions[type_url]


def test_mtls_secrets_inline_the_given_bytes() -> None:
    tls = {"mode": "mtls", "cert_file": "/c.pem", "key_file": "/k.pem", "ca_file": "/ca.pem"}
    p = policy(
        model("a", {"v1": 100}, upstream_tls=tls), model("b", {"v1": 100}, port=9100, upstream_tls=tls)
    )
    snapshot = compile_snapshot(p, files={"/c.pem": b"CERT", "/k.pem": b"KEY", "/ca.pem": b"CA"})
    secrets = {name: r.message for name, r in snapshot[SECRET].items()}
    assert len(secrets) == 2  # shared by both models
    chains = [
        s.tls_certificate.certificate_chain.inline_bytes
        for s in secrets.values()
        if s.HasField("tls_certificate")
    ]
    assert chains == [b"CERT"]


def test_dangling_references_are_refused() -> None:
    snapshot = compile_snapshot(load_policy(EXAMPLE))
    items = {t: [(n, r.message) for n, r in snapshot[t].items()] for t in snapshot}
    items[CLUSTER] = [(n, m) for n, m in items[CLUSTER] if n not in ("model|resnet|v3", "meshgate|ratelimit")]
    with pytest.raises(InconsistentSnapshot) as caught:
        Snapshot.build(items)
    problems = caught.value.problems
    assert any("missing Cluster 'model|resnet|v3'" in p for p in problems)  # a mirror target
    assert any("missing Cluster 'meshgate|ratelimit'" in p for p in problems)  # a filter's cluster
    items[ENDPOINT] = []
    with pytest.raises(InconsistentSnapshot, match="missing ClusterLoadAssignment"):
        Snapshot.build(items)


def test_each_resource_is_serialized_once(tmp_path: Path) -> None:
    snapshot = compile_snapshot(load_policy(EXAMPLE))
    resource = snapshot[CLUSTER]["model|resnet|v1"]
    assert resource.packed.value == resource.message.SerializeToString(deterministic=True)
    assert snapshot.size == sum(r.size for t in snapshot for r in snapshot[t].values())


def test_quotas_become_per_route_rate_limits_for_their_models() -> None:
    from envoy.extensions.filters.http.ratelimit.v3 import rate_limit_pb2

    snapshot = compile_snapshot(load_policy(EXAMPLE))
    by_name = {r.name: r for r in routes(snapshot)}

    def limits(route: str) -> list[list[tuple[str, str]]]:
        per_route = rate_limit_pb2.RateLimitPerRoute()
        assert by_name[route].typed_per_filter_config["envoy.filters.http.ratelimit"].Unpack(per_route)
        return [
            [
                (a.generic_key.descriptor_key, a.generic_key.descriptor_value)
                if a.HasField("generic_key")
                else (a.metadata.descriptor_key, f"{a.metadata.metadata_key.key}:{a.metadata.default_value}")
                if a.HasField("metadata")
                else (a.request_headers.descriptor_key, a.request_headers.header_name)
                for a in limit.actions
            ]
            for limit in per_route.rate_limits
        ]

    user_rps = [("quota", "user-rps"), ("tenant", "x-meshgate-tenant"), ("user", "x-meshgate-user")]
    assert limits("resnet|canary") == [user_rps]  # the token quota only covers llama-chat
    tokens = [("quota", "tenant-tokens-per-minute"), ("tenant", "x-meshgate-tenant")]
    identity = [("tenant", "x-meshgate-tenant"), ("model", "x-meshgate-model")]
    assert limits("llama-chat|canary") == [
        user_rps,
        [*tokens, ("meshgate.phase", "check")],
        [*tokens, ("meshgate.phase", "charge")],
        # the estimate charge: `meshgate.used` from the usage readers' flag, `none` when they wrote none
        # and `meshgate.refused` from the rate limit filter's metadata of a 429 (a refused request)
        [*tokens, ("meshgate.phase", "charge"), ("meshgate.refused", "envoy.filters.http.ratelimit:none"),
         ("meshgate.used", "meshgate.usage:none")],
        # an OpenAI model's chargeback descriptors (docs/llm.md)
        *([("meshgate.usage", kind), *identity] for kind in ("requests", "prompt_tokens", "completion_tokens")),
    ]
    per_route = rate_limit_pb2.RateLimitPerRoute()
    by_name["llama-chat|canary"].typed_per_filter_config["envoy.filters.http.ratelimit"].Unpack(per_route)
    check, charge, estimate = per_route.rate_limits[1:4]
    assert [lim.hits_addend.format for lim in (check, charge, estimate)] == [
        "%DYNAMIC_METADATA(envoy.filters.http.ext_authz:meshgate:tokens)%",  # asked
        "%DYNAMIC_METADATA(meshgate.usage:tokens)%",  # used: no descriptor when the backend reported none
        "%DYNAMIC_METADATA(envoy.filters.http.ext_authz:meshgate:tokens)%",  # asked, charged when unreported
    ]
    assert [lim.apply_on_stream_done for lim in (check, charge, estimate)] == [False, True, True]
    assert [[p.key for p in a.metadata.metadata_key.path] for a in estimate.actions[-2:]] == [["refused"], ["reported"]]
    bare = compile_snapshot(load_policy(EXAMPLE), CompileOptions(enable_ratelimit=False))
    assert not any("envoy.filters.http.ratelimit" in r.typed_per_filter_config for r in routes(bare))
