"""The JWT attack set and the algorithm matrix: every forged or broken token is a 401 with its own code."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from meshgate.extauthz import CheckInput, Decision, decide
from meshgate.extauthz.tokens import KeysUnavailable
from tests.unit.test_extauthz_support import (
    AUDIENCE,
    ISSUER,
    b64,
    claims,
    forge,
    make_table,
    mint,
    policy_doc,
    rsa_key,
)

TABLE = make_table()


def check(token: str) -> Decision:
    req = CheckInput(
        method="POST", path="/v2/models/resnet/infer", headers={"authorization": f"Bearer {token}"}
    )
    return decide(TABLE, req)


def _alg_none() -> str:
    return forge({"alg": "none", "typ": "JWT", "kid": "rsa-1"}, claims())


def _hs256_with_public_key() -> str:
    # the classic confusion attack: HMAC keyed with the issuer's public RSA key (PEM)
    pem = (
        rsa_key()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}).encode())
    payload = b64(json.dumps(claims()).encode())
    import hashlib
    import hmac

    sig = hmac.new(pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64(sig)}"


def _tampered_payload() -> str:
    header, _, sig = mint(tenant="globex").split(".")
    payload = b64(json.dumps(claims(tenant="acme")).encode())
    return f"{header}.{payload}.{sig}"


def _tampered_signature() -> str:
    header, payload, sig = mint().split(".")
    raw = bytearray(jwt.utils.base64url_decode(sig))
    raw[10] ^= 0x01
    return f"{header}.{payload}.{b64(bytes(raw))}"


def _attacker_jku() -> str:
    # signed by the attacker's key, pointing jku/x5u at the attacker's JWKS, kid of a real key
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return mint(
        key=attacker, headers={"jku": "https://evil.example/jwks.json", "x5u": "https://evil.example/c"}
    )


def _attacker_jku_own_kid() -> str:
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return mint(key=attacker, kid="evil-1", headers={"jku": "https://evil.example/jwks.json"})


def _non_json_header() -> str:
    return f"{b64(b'not json')}.{b64(json.dumps(claims()).encode())}.{b64(b'sig')}"


ATTACKS: list[tuple[str, Callable[[], str], str]] = [
    ("alg none", _alg_none, "token_alg_not_allowed"),
    ("alg None spelled differently", lambda: forge({"alg": "None"}, claims()), "token_alg_not_allowed"),
    (
        "alg unknown and long",
        lambda: forge({"alg": "RS256" * 400, "kid": "rsa-1"}, claims()),
        "token_alg_not_allowed",
    ),
    ("RS256 token re-signed as HS256 with the public key", _hs256_with_public_key, "token_alg_not_allowed"),
    ("expired", lambda: mint(exp=int(time.time()) - 60, iat=int(time.time()) - 120), "token_expired"),
    ("nbf in the future", lambda: mint(nbf=int(time.time()) + 600), "token_not_yet_valid"),
    ("iat in the future", lambda: mint(iat=int(time.time()) + 600), "token_not_yet_valid"),
    ("wrong iss", lambda: mint(iss="https://evil.example"), "token_unknown_issuer"),
    ("no iss", lambda: mint(iss=None), "token_unknown_issuer"),
    ("wrong aud", lambda: mint(aud="someone-else"), "token_wrong_audience"),
    ("no exp", lambda: mint(exp=None), "token_missing_claim"),
    ("unknown kid", lambda: mint(kid="rotated-away"), "token_unknown_kid"),
    ("tampered payload", _tampered_payload, "token_invalid_signature"),
    ("tampered signature", _tampered_signature, "token_invalid_signature"),
    ("oversized token", lambda: mint(padding="x" * 9000), "token_too_large"),
    ("non-JSON header", _non_json_header, "token_malformed"),
    ("not a JWT at all: an API key, and not a valid one", lambda: "abc", "invalid_api_key"),
    ("jku/x5u pointing elsewhere, real kid", _attacker_jku, "token_invalid_signature"),
    ("jku pointing elsewhere, attacker kid", _attacker_jku_own_kid, "token_unknown_kid"),
    ("alg not allowed for the issuer", lambda: mint("RS384"), "token_alg_not_allowed"),
    ("key of the wrong type for the alg", lambda: mint("ES256", kid="rsa-1"), "token_unknown_kid"),
]


@pytest.mark.parametrize(("name", "make", "code"), ATTACKS, ids=[a[0] for a in ATTACKS])
def test_attack_is_refused(name: str, make: Callable[[], str], code: str) -> None:
    decision = check(make())
    assert decision.status == 401
    assert decision.code == code, decision.message
    assert decision.identity is None


def test_a_client_chosen_alg_is_clipped_in_the_message() -> None:
    """The message quotes the token's alg: at most LOGGED_STRING_BYTES of it (meshgate.clip)."""
    from meshgate.clip import LOGGED_STRING_BYTES

    decision = check(forge({"alg": "RS256" * 400, "kid": "rsa-1"}, claims()))
    assert decision.code == "token_alg_not_allowed" and "RS256RS256" in decision.message
    assert len(decision.message) < LOGGED_STRING_BYTES + 40


def test_jku_and_x5u_are_ignored_on_a_good_token() -> None:
    token = mint(headers={"jku": "https://evil.example/jwks.json", "x5u": "https://evil.example/cert"})
    assert check(token).allowed


@pytest.mark.parametrize(("alg", "kid"), [("RS256", "rsa-1"), ("PS256", "rsa-1"), ("ES256", "ec-1"),
                                          ("EdDSA", "ed-1")])  # fmt: skip
def test_allowed_algorithms(alg: str, kid: str) -> None:
    decision = check(mint(alg, kid=kid))
    assert decision.allowed, decision.message


def test_token_without_kid_tries_the_keys_that_fit() -> None:
    assert check(mint(kid=None)).allowed


def test_leeway_accepts_a_just_expired_token() -> None:
    now = int(time.time())
    assert check(mint(exp=now - 2, iat=now - 100)).allowed  # leeway 5s in the test policy


def test_hmac_issuer_with_shared_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHGATE_TEST_HMAC", "s3cret-s3cret-s3cret-s3cret-s3cret!")
    doc = policy_doc()
    doc["issuers"].append({
        "name": "hmac", "issuer": "https://hmac.test", "audiences": [AUDIENCE],
        "shared_secret": {"env": "MESHGATE_TEST_HMAC"}, "algorithms": ["HS256"],
    })  # fmt: skip
    table = make_table(doc)
    good = jwt.encode(
        claims(iss="https://hmac.test"), "s3cret-s3cret-s3cret-s3cret-s3cret!", algorithm="HS256"
    )
    bad = jwt.encode(claims(iss="https://hmac.test"), "another-secret-another-secret-12", algorithm="HS256")
    rs = mint(iss="https://hmac.test")

    def run(token: str) -> str:
        req = CheckInput(
            method="POST", path="/v2/models/resnet/infer", headers={"authorization": f"Bearer {token}"}
        )
        return decide(table, req).code

    assert (run(good), run(bad), run(rs)) == ("ok", "token_invalid_signature", "token_alg_not_allowed")
    # and HS256 still refused for the public-key issuer
    assert run(jwt.encode(claims(), "s3cret-s3cret-s3cret-s3cret-s3cret!", algorithm="HS256")) == (
        "token_alg_not_allowed"
    )
    assert ISSUER != "https://hmac.test"


def test_missing_shared_secret_refuses_the_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MESHGATE_TEST_HMAC_MISSING", raising=False)
    doc = policy_doc()
    doc["issuers"].append({
        "name": "hmac", "issuer": "https://hmac.test", "audiences": [AUDIENCE],
        "shared_secret": {"env": "MESHGATE_TEST_HMAC_MISSING"}, "algorithms": ["HS256"],
    })  # fmt: skip
    with pytest.raises(ValueError, match="MESHGATE_TEST_HMAC_MISSING is not set"):
        make_table(doc)


def test_keys_not_loaded_is_unavailable_not_a_401() -> None:
    from meshgate.extauthz.keys import KeySource
    from meshgate.extauthz.table import compile_table
    from tests.unit.test_extauthz_support import make_policy

    policy = make_policy(policy_doc(issuer={"jwks_uri": "http://127.0.0.1:1/jwks.json"}))
    table = compile_table(policy, remote_keys=lambda issuer: KeySource(issuer.name))
    req = CheckInput(
        method="POST", path="/v2/models/resnet/infer", headers={"authorization": f"Bearer {mint()}"}
    )
    with pytest.raises(KeysUnavailable):
        decide(table, req)


def test_unknown_kid_asks_for_a_refetch() -> None:
    from meshgate.extauthz.keys import StaticKeys
    from meshgate.extauthz.table import compile_table
    from tests.unit.test_extauthz_support import make_policy, public_jwks

    asked: list[str] = []
    source = StaticKeys("test", public_jwks())
    source.on_unknown_kid = asked.append
    policy = make_policy(policy_doc(issuer={"jwks_uri": "http://127.0.0.1:1/jwks.json"}))
    table = compile_table(policy, remote_keys=lambda issuer: source)
    req = CheckInput(method="POST", path="/v2/models/resnet/infer",
                     headers={"authorization": f"Bearer {mint(kid='new-key')}"})  # fmt: skip
    assert decide(table, req).code == "token_unknown_kid"
    assert asked == ["new-key"]


def _with_kidless_key() -> tuple[list[str], Callable[[str], Decision]]:
    """The test policy's keys from a jwks_uri, plus an RSA key without a kid (rsa_key("kidless")): the
    kids the source was told are unknown, and a check against that table."""
    from jwt.algorithms import RSAAlgorithm

    from meshgate.extauthz.keys import StaticKeys
    from meshgate.extauthz.table import compile_table
    from tests.unit.test_extauthz_support import make_policy, public_jwks

    kidless = RSAAlgorithm.to_jwk(rsa_key("kidless").public_key(), as_dict=True)
    asked: list[str] = []
    source = StaticKeys("test", {"keys": [*public_jwks()["keys"], kidless]})
    source.on_unknown_kid = asked.append
    policy = make_policy(policy_doc(issuer={"jwks_uri": "http://127.0.0.1:1/jwks.json"}))
    table = compile_table(policy, remote_keys=lambda issuer: source)

    def run(token: str) -> Decision:
        headers = {"authorization": f"Bearer {token}"}
        return decide(table, CheckInput(method="POST", path="/v2/models/resnet/infer", headers=headers))

    return asked, run


def test_a_key_without_a_kid_verifies_a_token_of_any_kid() -> None:
    """As Envoy's jwt_authn does (KeySet.candidates): the kid is a hint, the signature decides; a
    token naming a kid no key has, signed by none of them, fails its signature and asks for a refetch
    (a key rotated in since), a token naming a known kid tries that key first, then the kidless one."""
    asked, run = _with_kidless_key()
    assert run(mint(kid=None, key=rsa_key("kidless"))).allowed
    assert run(mint(kid="another", key=rsa_key("kidless"))).allowed
    assert run(mint(kid="rsa-1", key=rsa_key("kidless"))).allowed
    assert run(mint(kid="rsa-1")).allowed
    assert asked == []  # (verified: nothing to fetch)
    refused = run(mint(kid="rotated-in", key=rsa_key("rotated")))
    assert (refused.code, asked) == ("token_invalid_signature", ["rotated-in"])
    # the kidless key is RSA: an ES256 token naming an unknown kid has no key to try at all
    assert run(mint("ES256", kid="ec-9")).code == "token_unknown_kid"
    assert asked == ["rotated-in", "ec-9"]
