"""gateway.enforcement native: what a native policy cannot hold is an error naming its field; auto and
ext_authz accept it. And the decision table the Lua filter reads (meshgate/xds/_native.py)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from meshgate.policy import PolicyError, parse_policy
from meshgate.xds._native import _lua, decision_table, lua_source
from tests.unit.test_extauthz_support import policy_doc


def _native(doc: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    doc["gateway"] = {"enforcement": "native"}
    doc["api_keys"] = []
    doc["models"] = [m for m in doc["models"] if m.get("protocol", "v2-rest") == "v2-rest"]
    return doc


def _errors(doc: dict[str, Any]) -> str:
    with pytest.raises(PolicyError) as caught:
        parse_policy(yaml.safe_dump(doc, sort_keys=False), "native.yaml")
    return str(caught.value)


def test_a_policy_native_can_hold_is_accepted() -> None:
    policy = parse_policy(yaml.safe_dump(_native(policy_doc())), "native.yaml")
    assert policy.gateway.enforcement == "native"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: d.update(api_keys=policy_doc()["api_keys"]), "api_keys[0]"),
        (lambda d: d["models"].append(policy_doc()["models"][1]), "models[1].protocol"),  # openai
        (lambda d: d["models"].append(policy_doc()["models"][2]), "models[1].protocol"),  # v2-grpc
        (lambda d: d["issuers"][0].update(jwks=None, discovery=True, jwks_uri=None), "issuers[0].discovery"),
        (
            lambda d: d.update(quotas=[{"name": "q", "per": "tenant", "limit": 9, "window": "minute",
                                        "unit": "tokens", "models": ["resnet"]}]),
            "quotas[0].unit",
        ),
    ],
    ids=["api key", "openai model", "grpc model", "oidc discovery", "token quota"],
)  # fmt: skip
def test_what_native_cannot_hold_is_an_error_naming_its_field(change: Any, field: str) -> None:
    doc = _native(policy_doc())
    change(doc)
    doc["issuers"][0] = {k: v for k, v in doc["issuers"][0].items() if v is not None}
    message = _errors(doc)
    assert f": {field}: native: " in message, message
    doc["gateway"]["enforcement"] = "auto"  # auto sends those requests to extauthz: accepted
    if field != "quotas[0].unit":  # (a token quota on a non-LLM model is refused in any mode)
        parse_policy(yaml.safe_dump(doc), "auto.yaml")


def test_decision_table_grants_and_owners() -> None:
    policy = parse_policy(yaml.safe_dump(policy_doc()), "p.yaml")
    table = decision_table(policy)
    resnet, chat = table["models"]["resnet"], table["models"]["llama-chat"]
    assert resnet["grants"]["classifier-only"] == {"v1": True}
    assert resnet["grants"]["invoker"] == {"v1": True, "v2": True}
    assert (resnet["owner"], chat["owner"]) == (False, "acme")
    assert table["tenants"]["globex"] == {"tier": "free", "origins": False}
    issuer = table["issuers"]["https://issuer.test"]
    assert issuer["fits"]["ES256"] == {"any": True, "kidless": False, "kids": {"ec-1": True}}
    assert issuer["claims"]["tier"] == "tier"
    assert table["delegate_prefixes"] == []  # ext_authz mode: nothing is delegated by the script


def test_lua_literals_escape_every_byte_that_could_end_a_string() -> None:
    assert _lua('a"b\\c\nd]]') == '"a\\034b\\092c\\010d\\093\\093"'
    assert _lua("é") == '"\\195\\169"'
    assert _lua({"b": [1, True], "a": False}) == '{["a"] = false, ["b"] = {1, true}}'
    assert lua_source(parse_policy(yaml.safe_dump(policy_doc()), "p.yaml")).startswith("local P = {")


def test_an_https_jwks_uri_gets_a_verified_tls_cluster_with_the_configured_ca() -> None:
    from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

    from meshgate.xds import compile_snapshot
    from meshgate.xds._types import CLUSTER
    from meshgate.xds.options import options_from_env

    doc = _native(policy_doc(issuer={"jwks_uri": "https://idp.example:8443/keys"}))
    policy = parse_policy(yaml.safe_dump(doc), "native.yaml")
    options = options_from_env({}, {"MESHGATE_XDS_JWKS_CA": "/etc/gateway/idp-ca.pem"})
    cluster = compile_snapshot(policy, options)[CLUSTER]["meshgate|jwks|test"].message
    endpoint = cluster.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
    assert (endpoint.address, endpoint.port_value) == ("idp.example", 8443)
    context = tls_pb2.UpstreamTlsContext()
    assert cluster.transport_socket.typed_config.Unpack(context)
    assert context.sni == "idp.example"
    assert context.common_tls_context.validation_context.trusted_ca.filename == "/etc/gateway/idp-ca.pem"
