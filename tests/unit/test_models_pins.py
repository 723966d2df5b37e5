"""Pinned versions: what a pin names (policy), who may use it (extauthz's decide), where it goes (routes)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from meshgate.extauthz import CheckInput, decide
from meshgate.policy import PolicyError
from meshgate.xds import compile_snapshot
from tests.unit.test_extauthz_support import API_KEY_GLOBEX, make_table, policy_doc, sha256
from tests.unit.test_xds_compile import routes
from tests.unit.test_xds_support import model, policy


def _numbered() -> dict[str, Any]:
    doc = copy.deepcopy(policy_doc())
    resnet = doc["models"][0]
    resnet["versions"][0]["backend_version"] = "1"
    resnet["versions"][1]["backend_version"] = "2"
    return doc


@pytest.mark.parametrize(
    ("versions", "message"),
    [
        ([("v1", "v2"), ("v2", None)], "'v2' would pin both versions 'v1' and 'v2'"),
        ([("v1", "3"), ("v2", "3")], "'3' would pin both versions 'v1' and 'v2'"),
    ],
)
def test_a_pin_names_one_version(versions: list[tuple[str, str | None]], message: str) -> None:
    doc = model("m", {name: 50 for name, _ in versions})
    for entry, (_, backend) in zip(doc["versions"], versions, strict=True):
        if backend is not None:
            entry["backend_version"] = backend
    with pytest.raises(PolicyError) as caught:
        policy(doc)
    assert message in str(caught.value)


def test_a_backend_version_equal_to_its_own_name_is_one_pin() -> None:
    doc = model("m", {"1": 100})
    doc["versions"][0]["backend_version"] = "1"
    assert policy(doc).models[0].versions[0].pins == ("1",)


@pytest.mark.parametrize(("pin", "code"), [("1", "ok"), ("v1", "ok"), ("2", "version_forbidden")])
def test_a_backend_version_pins_like_its_version_name(pin: str, code: str) -> None:
    """globex's role may pin v1 only: Triton's number of v1 is granted with it, v2's is not."""
    table = make_table(_numbered())
    path = f"/v2/models/resnet/versions/{pin}/infer"
    decision = decide(table, CheckInput(method="POST", path=path, headers={"x-api-key": API_KEY_GLOBEX}))
    assert decision.code == code


def test_unknown_numbers_stay_forbidden() -> None:
    doc = _numbered()
    doc["api_keys"].append({"id": "k", "tenant": "acme", "roles": ["invoker"], "sha256": sha256("k")})
    decision = decide(
        make_table(doc),
        CheckInput(method="POST", path="/v2/models/resnet/versions/9/infer", headers={"x-api-key": "k"}),
    )
    assert decision.code == "version_forbidden"


def test_pinned_routes_come_first_and_rewrite_to_the_backend_path() -> None:
    rest = model("m", {"stable": 90, "canary": 10})
    rest["versions"][0]["backend_version"] = "1"
    grpc = model("g", {"v1": 100}, protocol="v2-grpc", port=9100)
    table = [
        (r.name, r.match.path_separated_prefix, r.route.prefix_rewrite, r.route.cluster)
        for r in routes(compile_snapshot(policy(rest, grpc)))
        if r.HasField("route")  # (not the size answers: tests/unit/test_models_bodies.py)
    ]
    assert table[:3] == [
        ("m|pin|stable", "/v2/models/m/versions/stable", "/v2/models/m/versions/1", "model|m|stable"),
        ("m|pin|1", "/v2/models/m/versions/1", "", "model|m|stable"),  # already the backend's path
        ("m|pin|canary", "/v2/models/m/versions/canary", "/v2/models/m", "model|m|canary"),  # KServe
    ]
    assert [name for name, *_ in table[3:5]] == ["m|canary", "m|canary"]
    pinned = next(r for r in routes(compile_snapshot(policy(rest, grpc))) if r.name == "g|pin|v1")
    assert {(h.name, h.string_match.exact) for h in pinned.match.headers} == {
        ("x-meshgate-model", "g"),
        ("x-meshgate-model-version", "v1"),
    }
    assert pinned.route.cluster == "model|g|v1"
