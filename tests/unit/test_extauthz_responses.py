"""The protobuf edge: CheckRequest -> CheckInput, and allow()/deny() CheckResponses."""

from __future__ import annotations

import json

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2
from google.rpc import code_pb2

from meshgate.extauthz import CheckInput, Decision, Identity, Target
from meshgate.extauthz.answers import Form
from meshgate.extauthz.responses import (
    HEADER_PREFIX,
    WireTemplate,
    add_decision_id,
    to_check_input,
    to_response,
)

WHO = Identity(tenant="acme", user="alice", tier="gold", roles=("invoker",), credential="jwt:test")


def respond(
    decision: Decision, req: CheckInput, *, decision_id: str, api_key_header: str, forward_authorization: bool
) -> external_auth_pb2.CheckResponse:
    """What the service does: the response for the decision, then its decision id."""
    client = [name for name in req.headers if name.startswith(HEADER_PREFIX)]
    response = to_response(
        decision,
        client_headers=client,
        api_key_header=api_key_header,
        forward_authorization=forward_authorization,
    )
    add_decision_id(response, decision_id)
    return response


def headers_of(option_list: object) -> dict[str, str]:
    return {o.header.key: o.header.value for o in option_list}  # type: ignore[attr-defined]


def test_check_request_becomes_check_input() -> None:
    request = external_auth_pb2.CheckRequest()
    http = request.attributes.request.http
    http.method, http.path, http.id = "POST", "/v2/models/resnet/infer", "req-1"
    http.headers["authorization"] = "Bearer t"
    http.raw_body = b"\x00\x00\x00\x00\x01x"
    request.attributes.source.address.socket_address.address = "10.0.0.1"
    got = to_check_input(request)
    assert got == CheckInput(
        method="POST", path="/v2/models/resnet/infer", headers={"authorization": "Bearer t"},
        body=b"\x00\x00\x00\x00\x01x", source="10.0.0.1", request_id="req-1",
    )  # fmt: skip


def test_raw_header_map_is_read_too() -> None:
    request = external_auth_pb2.CheckRequest()
    entry = request.attributes.request.http.header_map.headers.add()
    entry.key, entry.raw_value = "X-Api-Key", b"k"
    assert to_check_input(request).headers == {"x-api-key": "k"}


def test_allow_sets_identity_and_removes_client_headers() -> None:
    req = CheckInput(method="POST", path="/v2/models/resnet/versions/v2/infer", headers={
        "x-meshgate-tenant": "victim", "x-meshgate-model-version": "v9", "x-meshgate-debug": "1",
        "authorization": "Bearer t", "x-api-key": "k",
    })  # fmt: skip
    decision = Decision(
        code="ok", identity=WHO, target=Target(kind="model", model="resnet", version="v2", tokens=7)
    )
    response = respond(
        decision, req, decision_id="d1", api_key_header="x-api-key", forward_authorization=False
    )
    assert response.status.code == code_pb2.OK
    ok = response.ok_response
    assert headers_of(ok.headers) == {
        "x-meshgate-tenant": "acme", "x-meshgate-user": "alice", "x-meshgate-tier": "gold",
        "x-meshgate-decision-id": "d1", "x-meshgate-model": "resnet", "x-meshgate-model-version": "v2",
    }  # fmt: skip
    assert {o.append_action for o in ok.headers} == {base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD}
    assert sorted(ok.headers_to_remove) == ["authorization", "x-api-key", "x-meshgate-debug"]
    meta = response.dynamic_metadata["meshgate"]
    assert dict(meta) == {"tenant": "acme", "user": "alice", "tier": "gold", "model": "resnet", "tokens": 7.0,
                          "version": "v2"}  # fmt: skip


def test_allow_forwards_authorization_when_configured() -> None:
    req = CheckInput(method="GET", path="/v2/health/ready", headers={"authorization": "Bearer t"})
    decision = Decision(code="ok", identity=WHO, target=Target(kind="server"))
    response = respond(
        decision, req, decision_id="d1", api_key_header="x-api-key", forward_authorization=True
    )
    assert "authorization" not in response.ok_response.headers_to_remove
    assert "x-meshgate-model" not in headers_of(response.ok_response.headers)


def test_deny_401_has_www_authenticate_and_json_body() -> None:
    req = CheckInput(method="POST", path="/x")
    decision = Decision.deny("token_expired", "token has expired")
    response = respond(
        decision, req, decision_id="d2", api_key_header="x-api-key", forward_authorization=False
    )
    denied = response.denied_response
    assert response.status.code == code_pb2.UNAUTHENTICATED
    assert denied.status.code == 401
    assert json.loads(denied.body) == {"error": "token_expired", "message": "token has expired"}
    got = headers_of(denied.headers)
    assert (
        got["www-authenticate"]
        == 'Bearer realm="meshgate", error="invalid_token", error_description="token_expired"'
    )
    assert got["content-type"] == "application/json"
    assert got["x-meshgate-decision-id"] == "d2"


def test_deny_403_and_413() -> None:
    req = CheckInput(method="POST", path="/x")
    forbidden = respond(Decision.deny("model_forbidden", "no"), req, decision_id="d", api_key_header="k",
                            forward_authorization=False)  # fmt: skip
    too_big = respond(Decision.deny("context_limit_exceeded", "big"), req, decision_id="d", api_key_header="k",
                          forward_authorization=False)  # fmt: skip
    assert (forbidden.status.code, forbidden.denied_response.status.code) == (code_pb2.PERMISSION_DENIED, 403)
    assert "www-authenticate" not in headers_of(forbidden.denied_response.headers)
    assert (too_big.status.code, too_big.denied_response.status.code) == (code_pb2.INVALID_ARGUMENT, 413)


@pytest.mark.parametrize(
    "decision",
    [
        Decision(
            code="ok", identity=WHO, target=Target(kind="model", model="resnet", version="v2", tokens=7)
        ),
        # values a caller chooses (user claim, model name from a gRPC body) that look like the placeholders
        Decision(
            code="ok",
            identity=Identity(tenant="acme", user="a" * 30, tier="gold", roles=(), credential="jwt:test"),
            target=Target(kind="model", model="bbbbbbbbbbbbb" + "a" * 25),
        ),
        Decision.deny("token_expired", "token has expired"),
        Decision.deny("model_forbidden", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
    ],
)
def test_wire_template_is_the_response_with_the_decision_id(decision: Decision) -> None:
    """A cached decision's response is spliced from bytes: it must parse to exactly what the builders make."""
    response = to_response(
        decision, client_headers=["x-meshgate-debug"], api_key_header="x-api-key", forward_authorization=False
    )
    template = WireTemplate.build(response, width=25)
    for decision_id in ("0123456789ab-000000000001", "aaaaaaaaaaaa-aaaaaaaaaaaa"):
        expected = external_auth_pb2.CheckResponse()
        expected.CopyFrom(response)
        add_decision_id(expected, decision_id)
        assert external_auth_pb2.CheckResponse.FromString(template.render(decision_id)) == expected
    with pytest.raises(ValueError):
        template.render("short")


@pytest.mark.parametrize("form", list(Form))
def test_every_form_has_a_template_equal_to_its_encoding(form: Form) -> None:
    """The HTTP answers of cached decisions are spliced too: byte for byte what to_http writes."""
    decisions = [
        Decision(
            code="ok", identity=WHO, target=Target(kind="model", model="resnet", version="v2", tokens=7)
        ),
        Decision.deny("model_forbidden", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
        Decision.deny("token_expired", "token has expired"),
    ]
    for decision in decisions:
        response = to_response(
            decision,
            client_headers=["x-meshgate-debug"],
            api_key_header="x-api-key",
            forward_authorization=False,
        )
        template = WireTemplate.build(response, width=25, encode=form.encode)
        for decision_id in ("0123456789ab-000000000001", "bbbbbbbbbbbb-aaaaaaaaaaaa"):
            expected = external_auth_pb2.CheckResponse()
            expected.CopyFrom(response)
            add_decision_id(expected, decision_id)
            assert template.render(decision_id) == form.encode(expected)
        if form is Form.HTTP_HEAD:
            assert template.render("0123456789ab-000000000001").endswith(
                b"\r\n\r\n"
            )  # no body after the head
