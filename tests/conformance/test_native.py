"""Proof of equal decisions: the same requests through a gateway that decides natively (Envoy's jwt_authn +
meshgate's compiled Lua decision, gateway.enforcement native or auto) and through one that asks meshgate
extauthz (enforcement ext_authz), each a real Envoy configured by its own `meshgate serve` over ADS.

Each request must get the same status, error code, message, WWW-Authenticate, and the model must see the
same x-meshgate-* headers (the decision id aside: it names a decision, and differs by nature). The
policy is the extauthz tests' own (tests/unit/test_extauthz_support: three key types, a tier claim, a
tenant with allowed origins, a role limited to one version, a private model), the JWT corpus every
attack those tests know (tests/unit/test_extauthz_jwt.ATTACKS) plus identity, model and path cases.

- auto: the whole policy (API keys, OpenAI and gRPC models): what it cannot decide natively goes to
  ext_authz, so every case must match;
- native: the same policy without what native cannot hold (API keys, OpenAI and gRPC models: see
  meshgate.policy.native): every case must match, except the ones whose answer depends on what native
  left out (marked `native=False`: they need an API key or a model named in a body).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from jwt.algorithms import RSAAlgorithm

from meshgate import contract
from meshgate.extauthz.core import MAX_USER_CHARS
from meshgate.xds._fast import FAST_STATS
from meshgate.xds.bootstrap import bootstrap_dict
from tests.conformance.upstream import EchoHTTP
from tests.harness.envoy import Envoy
from tests.harness.meshgate import Meshgate
from tests.harness.procs import free_port
from tests.harness.stack import Stack
from tests.unit.test_extauthz_jwt import ATTACKS
from tests.unit.test_extauthz_support import (
    API_KEY,
    API_KEY_GLOBEX,
    LateJwks,
    claims,
    forge,
    mint,
    policy_doc,
    rsa_key,
)

MODES = ("ext_authz", "auto", "native", "http", "auto-http", "http-admit")
"""`http`: enforcement ext_authz, extauthz called over HTTP (gateway.ext_authz.transport: http), the
same decisions by another transport (meshgate/extauthz/http.py): every case must match, none is fast;
`auto-http`: auto, what it delegates called over HTTP; `http-admit`: `http` with the quotas decided in
the Check (gateway.ratelimit.admission: extauthz, meshgate/ratelimit/admission.py)."""
HTTP_MODES = ("http", "auto-http", "http-admit")
METERED = 3  # requests a day per user of globex (free tier: x1) on model `metered`
FAST_COUNTER = f"vhost.models.route.{FAST_STATS}.upstream_rq_completed"


def gateway_policy(doc: dict[str, Any], mode: str, *, upstream: int, port: int) -> dict[str, Any]:
    """`doc` served on 127.0.0.1:`port` in enforcement `mode`, every model version at `upstream`; in
    native, without what a native policy cannot hold (meshgate.policy.native)."""
    doc["gateway"] = {"address": "127.0.0.1", "port": port, "enforcement": mode}
    if mode in HTTP_MODES:
        enforcement = {"http": "ext_authz", "auto-http": "auto", "http-admit": "ext_authz"}[mode]
        doc["gateway"].update(enforcement=enforcement, ext_authz={"transport": "http"})
        if mode == "http-admit":
            doc["gateway"]["ratelimit"] = {"admission": "extauthz"}
    if mode == "native":
        doc["api_keys"] = []
        doc["models"] = [m for m in doc["models"] if m.get("protocol", "v2-rest") == "v2-rest"]
    for model in doc["models"]:
        for version in model["versions"]:
            version["endpoints"] = [f"127.0.0.1:{upstream}"]
    return doc


FETCHED = "https://fetched.test"
"""The issuer whose keys every gateway fetches from a `jwks_uri` (FETCHED_JWKS, served by the test)."""
FETCHED_JWKS = {"keys": [
    {**RSAAlgorithm.to_jwk(rsa_key("fetched").public_key(), as_dict=True), "kid": "f-1"},
    RSAAlgorithm.to_jwk(rsa_key("fetched-kidless").public_key(), as_dict=True),
]}  # fmt: skip


def _doc(mode: str, *, upstream: int, port: int, jwks_uri: str) -> dict[str, Any]:
    doc = policy_doc()
    # a key without a kid: extauthz and jwt_authn both try it for a token of any kid (KeySet.candidates),
    # inline (pinned: meshgate.extauthz.keys.pinned_jwks) or fetched from a jwks_uri (Envoy reads the set)
    kidless = RSAAlgorithm.to_jwk(rsa_key("kidless").public_key(), as_dict=True)
    doc["issuers"][0]["jwks"]["keys"].append({**kidless, "use": "sig"})
    fetched = {k: v for k, v in doc["issuers"][0].items() if k != "jwks"}
    doc["issuers"].append({**fetched, "name": "fetched", "issuer": FETCHED, "jwks_uri": jwks_uri})
    # five tenants of one tier: their fast routes match the tenant with one RE2 alternation (_fast.OR_MAX)
    doc["tenants"] += [
        {"name": name, "tier": "free"} for name in ("globex.eu", "globex-us", "hooli", "umbrella")
    ]
    doc["models"] += [
        {"name": "vault", "visibility": "private", "owner": "acme", "versions": [{"name": "v1"}]},
        {"name": "metered", "versions": [{"name": "v1"}]},
    ]
    doc["quotas"] = [
        {"name": "metered-user-day", "per": ["tenant", "user"], "limit": METERED, "window": "day",
         "models": ["metered"]},
    ]  # fmt: skip
    for tenant in doc["tenants"]:
        tenant["quotas"] = ["metered-user-day"]
    return gateway_policy(doc, mode, upstream=upstream, port=port)


@dataclass
class Gateways:
    ports: dict[str, int]
    envoys: dict[str, Envoy]

    def fast(self, mode: str) -> int:
        """Requests the gateway of `mode` decided on a native fast route (`meshgate.xds._fast`)."""
        return int(self.envoys[mode].stat(FAST_COUNTER))


@contextlib.contextmanager
def _gateways(workdir: Path) -> Iterator[Gateways]:
    upstream = EchoHTTP()
    stack = Stack(workdir)
    jwks = LateJwks(FETCHED_JWKS)
    jwks.up()
    try:
        ports: dict[str, int] = {}
        envoys: dict[str, Envoy] = {}
        for mode in MODES:
            ports[mode] = free_port()
            doc = _doc(mode, upstream=upstream.port, port=ports[mode], jwks_uri=jwks.url)
            counted = {"MESHGATE_XDS_FAST_STATS": "true"}  # (the fast routes' counter: `Gateways.fast`)
            meshgate = stack.add(Meshgate(doc, workdir=stack.workdir, env=counted)).start()
            config = bootstrap_dict(f"native-{mode}", xds=meshgate.address("xds"))
            envoys[mode] = stack.add(Envoy(config, workdir=stack.workdir, name=mode)).start(wait_ready=False)
        for envoy in envoys.values():
            envoy.wait_ready()
        yield Gateways(ports, envoys)
    finally:
        stack.close()
        upstream.close()
        jwks.__exit__()


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateways]:
    with _gateways(tmp_path_factory.mktemp("native")) as running:
        yield running


@dataclass(frozen=True)
class Case:
    name: str
    headers: Callable[[], dict[str, str]]
    path: str = "/v2/models/resnet/infer"
    method: str = "POST"
    body: Any = None
    native: bool = True  # False: the answer depends on what a native policy cannot hold
    fast: bool = False  # True: allowed natively without the Lua decision (a fast route, `_fast`)
    code: str | None = None  # the error code extauthz must give (the reference itself is checked)


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def _jwt(**overrides: Any) -> Callable[[], dict[str, str]]:
    return lambda: _bearer(mint(**overrides))


def _issued(**overrides: Any) -> Callable[[], dict[str, str]]:
    """A token issued a minute ago: one issued since the fast routes' last refresh (`CompileOptions.fast_refresh`,
    with this issuer's leeway of a few seconds) is decided by the Lua path, allowed all the same."""
    return lambda: _bearer(mint(iat=int(time.time()) - 60, **overrides))


INFER = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]}
FORGED = {contract.TENANT_HEADER: "globex", contract.USER_HEADER: "root", contract.TIER_HEADER: "gold"}
CHAT = {"model": "llama-chat", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}

KIDLESS_CODES = {
    "unknown kid": "token_invalid_signature",
    "jku pointing elsewhere, attacker kid": "token_invalid_signature",
}
"""The attacks whose token names a kid no key has: the policy here also has an RSA key without a kid,
which both gateways try for them (KeySet.candidates); its signature fails."""

CASES = [
    *(Case(f"attack: {name}", (lambda make=make: _bearer(make())), code=KIDLESS_CODES.get(name, code))
      for name, make, code in ATTACKS),
    Case("valid RS256", _issued(), fast=True),
    Case("valid PS256", _issued(alg="PS256"), fast=True),
    Case("valid ES256", _issued(alg="ES256", kid="ec-1"), fast=True),
    Case("valid EdDSA", _issued(alg="EdDSA", kid="ed-1"), fast=True),
    Case("no kid: the keys that fit", _issued(kid=None), fast=True),
    Case("no kid, the key without a kid", _issued(kid=None, key=rsa_key("kidless")), fast=True),
    Case("another kid, signed by the key without a kid", _issued(kid="rsa-9", key=rsa_key("kidless")), fast=True),
    Case("another kid, signed by no key of the set", _jwt(kid="rsa-9", key=rsa_key("stranger")),
         code="token_invalid_signature"),
    Case("fetched keys: valid", _issued(iss=FETCHED, kid="f-1", key=rsa_key("fetched")), fast=True),
    Case("fetched keys: no kid, the key without a kid", _issued(iss=FETCHED, kid=None, key=rsa_key("fetched-kidless")),
         fast=True),
    Case("fetched keys: another kid, signed by the key without a kid",
         _issued(iss=FETCHED, kid="f-9", key=rsa_key("fetched-kidless")), fast=True),
    Case("fetched keys: a known kid, signed by the key without a kid",
         _issued(iss=FETCHED, kid="f-1", key=rsa_key("fetched-kidless")), fast=True),
    Case("fetched keys: another kid, signed by no key of the set", _jwt(iss=FETCHED, kid="f-9", key=rsa_key("stranger")),
         code="token_invalid_signature"),
    Case("fetched keys: an allowed alg no fetched key fits", _jwt(iss=FETCHED, alg="ES256", kid="f-1")),
    Case("RS384: a key fits, the issuer does not allow it", _jwt(alg="RS384")),
    Case("jku and x5u ignored on a good token", _issued(headers={"jku": "https://evil.example/j", "x5u": "https://e/c"}),
         fast=True),
    Case("just expired, within leeway", lambda: _bearer(mint(exp=int(time.time()) - 2, iat=int(time.time()) - 100)),
         fast=True),
    Case("forged identity headers are replaced",
         lambda: {**_issued(tenant="globex", tier=None)(), **FORGED}, fast=True),
    Case("tier from the token's claim", _jwt(tier="free")),
    Case("unknown tier claim", _jwt(tier="platinum")),
    Case("unknown tenant", _jwt(tenant="initech")),
    Case("a tenant of the alternation", _issued(tenant="globex.eu", tier=None), fast=True),
    # (issued a minute ago, as the fast ones: refused all the same, and not on a fast route)
    Case("a tenant the alternation's '.' would match unescaped", _issued(tenant="globexxeu", tier=None)),
    Case("a tenant that starts like one of the alternation", _issued(tenant="globex-u", tier=None)),
    Case("a tenant that two of the alternation make", _issued(tenant="hooliumbrella", tier=None)),
    Case("no tenant claim", _jwt(tenant=None)),
    Case("no sub claim", _jwt(sub=None)),
    Case("unprintable user", _jwt(sub="al\nice")),
    Case("roles as one string", _jwt(roles="classifier-only other")),
    Case("a granting role among others", _issued(roles=["nobody", "invoker"]), fast=True),
    Case("user of MAX_USER_CHARS characters", _issued(sub="u" * MAX_USER_CHARS), fast=True),
    Case("non-ASCII user of MAX_USER_CHARS characters", _issued(sub="é" * MAX_USER_CHARS)),
    Case("non-ASCII user of one character more", _issued(sub="é" * (MAX_USER_CHARS + 1))),
    Case("user of one character more", _jwt(sub="u" * (MAX_USER_CHARS + 1))),
    Case("user with spaces and symbols", _issued(sub=" al ice % "), fast=True),
    Case("user with letters and emoji", _issued(sub="zoë 🙂 日本")),
    Case("user with a no-break space (not printable)", _issued(sub="zoë\u00a0x")),
    Case("user with a format character (not printable)", _issued(sub="a\u200bb")),
    Case("tier claim not a string", _jwt(tier=["gold", 2, 1.5, True])),
    Case("tier claim a number", _jwt(tier=7)),
    Case("tenant claim not a string", _jwt(tenant=["acme"])),
    Case("roles claim an object", _jwt(roles={"invoker": True})),
    Case("a second Authorization header", lambda: {"authorization": f"Bearer {mint()}, Bearer x.y.z"}),
    Case("iat a little in the future, within leeway", lambda: _bearer(mint(iat=int(time.time()) + 3))),
    Case("version path of no pin, unversioned grant", _jwt(), path="/v2/models/resnet/versions/v9"),
    # (`/versions` and `/versions/` take the slow path: the catch is a separated prefix, docs/native.md)
    Case("versions path with no version", _issued(), path="/v2/models/resnet/versions/", method="GET"),
    Case("versions path itself", _issued(), path="/v2/models/resnet/versions", method="GET"),
    Case("no roles", _jwt(roles=None)),
    Case("version pinned, granted", _issued(roles=["classifier-only"], tenant="globex", tier=None),
         path="/v2/models/resnet/versions/v1/infer", fast=True),
    Case("version pinned, not granted", _jwt(roles=["classifier-only"], tenant="globex", tier=None),
         path="/v2/models/resnet/versions/v2/infer"),
    Case("version that does not exist", _jwt(), path="/v2/models/resnet/versions/v9/infer"),
    Case("unknown model", _jwt(), path="/v2/models/nope/infer"),
    Case("private model of another tenant", _jwt(tenant="globex", tier=None), path="/v2/models/vault/infer"),
    Case("private model of its owner", _issued(), path="/v2/models/vault/infer", fast=True),
    Case("model metadata, GET", _issued(), path="/v2/models/resnet", method="GET", fast=True),
    Case("query string ignored", _issued(), path="/v2/models/resnet/infer?x=1", fast=True),
    Case("server health", _jwt(), path="/v2/health/ready", method="GET"),
    Case("a path that names no model", _jwt(), path="/internal/anything", method="GET"),
    Case("browser call from an allowed origin", lambda: {**_bearer(mint()), "origin": "https://app.acme.example"}),
    Case("browser call from another origin", lambda: {**_bearer(mint()), "origin": "https://evil.example"}),
    Case("browser call, sec-fetch-site only", lambda: {**_bearer(mint()), "sec-fetch-site": "cross-site"}),
    Case("no credentials", lambda: {}),
    Case("no credentials on another path", lambda: dict(FORGED), path="/internal/anything", method="GET"),
    Case("Basic scheme", lambda: {"authorization": "Basic YWxhZGRpbjpvcGVuc2VzYW1l"}),
    Case("Bearer without a token", lambda: {"authorization": "Bearer"}),
    Case("lowercase bearer", lambda: {"authorization": f"bearer {mint()}"}),
    Case("a bearer and an API key", lambda: {**_bearer(mint()), "x-api-key": API_KEY}),
    Case("an unknown API key", lambda: {"x-api-key": "not-a-key"}),
    Case("an unknown bearer key", lambda: _bearer("not-a-key")),
    Case("a valid API key", lambda: {"x-api-key": API_KEY}, native=False),
    Case("a valid bearer API key, version not granted", lambda: _bearer(API_KEY_GLOBEX),
         path="/v2/models/resnet/versions/v2/infer", native=False),
    Case("forged alg none with a valid payload", lambda: _bearer(forge({"alg": "none"}, claims()))),
    Case("OpenAI chat, JWT", _jwt(), path="/v1/chat/completions", body=CHAT, native=False),
    Case("OpenAI chat, no credentials", lambda: {}, path="/v1/chat/completions", body=CHAT),
    Case("OpenAI model list", _jwt(), path="/v1/models", method="GET", native=False),
    Case("OpenAI model list, no credentials", lambda: {}, path="/v1/models", method="GET"),
    Case("OpenAI model list, an API key", lambda: {"x-api-key": API_KEY}, path="/v1/models", method="GET",
         native=False),
    Case("OpenAI model, one", _jwt(), path="/v1/models/llama-chat", method="GET", native=False),
    Case("OpenAI model, private of another tenant", _jwt(tenant="globex", tier=None), path="/v1/models/vault",
         method="GET", native=False),
    Case("OpenAI chat, an API key", lambda: _bearer(API_KEY), path="/v1/chat/completions", body=CHAT,
         native=False),
    Case("OpenAI chat, not JSON", _jwt(), path="/v1/chat/completions", body=["not", "an object"], native=False),
    Case("OpenAI chat, a 900 KiB prompt (the body in many reads)", _jwt(), path="/v1/chat/completions",
         body={**CHAT, "messages": [{"role": "user", "content": "word " * (180 << 10)}]}, native=False),
    # HEAD: an answer without a body (over HTTP, a denial's body must not follow its head)
    Case("HEAD without credentials", lambda: {}, path="/v2/models/resnet", method="HEAD"),
    Case("HEAD without credentials, again", lambda: {}, path="/v2/models/resnet", method="HEAD"),
    Case("HEAD, valid", _issued(), path="/v2/models/resnet", method="HEAD", fast=True),
    Case("HEAD model list without credentials", lambda: {}, path="/v1/models", method="HEAD"),
]  # fmt: skip


FETCHED_MISFITS = {
    "fetched keys: an allowed alg no fetched key fits": ("token_unknown_kid", "token_invalid_signature")
}
"""Keys Envoy fetches are not known to the decision: a token whose alg no key of the set can verify is
refused (401) by both, extauthz saying no key fits (it reads the set), jwt_authn having tried a key
without `alg` of the kid and failed its signature (docs/native.md, "Equal decisions")."""
HTTP_TRIMS = {"user with spaces and symbols"}
"""Over HTTP, Envoy reads extauthz's answer headers as HTTP/1.1 does, without the white space around a
value: a user (`sub`) that ends in a space reaches the model and the quotas without it."""


@dataclass
class Answer:
    status: int
    error: Any = None
    message: Any = None
    www_authenticate: str | None = None
    model_sees: dict[str, str] = field(default_factory=dict)


def _send(port: int, case: Case, headers: dict[str, str]) -> Answer:
    url = f"http://127.0.0.1:{port}{case.path}"
    with httpx.Client(timeout=10.0, trust_env=False) as client:
        response = client.request(case.method, url, json=case.body or (INFER if case.method == "POST" else None),
                                  headers=headers)  # fmt: skip
    answer = Answer(response.status_code, www_authenticate=response.headers.get("www-authenticate"))
    try:
        doc = response.json()
    except json.JSONDecodeError:
        return answer
    error = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(error, dict):  # OpenAI's shape
        answer.error, answer.message = error.get("code"), error.get("message")
    else:
        answer.error, answer.message = error, doc.get("message") if isinstance(doc, dict) else None
    if isinstance(doc, dict) and isinstance(doc.get("echo"), dict):
        answer.model_sees = {k: v for k, v in doc["echo"].items() if k != contract.DECISION_ID_HEADER}
    return answer


@pytest.mark.parametrize("mode", ["auto", "native", "http", "auto-http", "http-admit"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_same_decision(gateways: Gateways, mode: str, case: Case) -> None:
    if mode == "native" and not case.native:
        pytest.skip("needs what a native policy cannot hold (an API key, a model named in a body)")
    headers = case.headers()  # one token for both gateways
    reference = _send(gateways.ports["ext_authz"], case, headers)
    enforced_by_extauthz = mode in ("http", "http-admit")
    before = gateways.fast(mode) if not enforced_by_extauthz else 0
    native = _send(gateways.ports[mode], case, headers)
    if not enforced_by_extauthz:
        assert gateways.fast(mode) - before == int(case.fast), f"{mode}: {case.name}: fast path taken or not"
    if case.code is not None:  # both gateways equal and right: not merely equally wrong
        assert (reference.status, reference.error) == (401, case.code), case.name
    trims = enforced_by_extauthz or (mode == "auto-http" and not case.fast)  # (a fast route: Envoy sets them)
    if trims and case.name in HTTP_TRIMS:  # the one known difference (docs/extauthz.md)
        user = reference.model_sees[contract.USER_HEADER]
        assert user != user.strip() and native.model_sees[contract.USER_HEADER] == user.strip()
        reference.model_sees[contract.USER_HEADER] = user.strip()
    if not enforced_by_extauthz and case.name in FETCHED_MISFITS:  # known (FETCHED_MISFITS)
        assert (reference.status, reference.error, native.status, native.error) == (
            401, FETCHED_MISFITS[case.name][0], 401, FETCHED_MISFITS[case.name][1])  # fmt: skip
        native.error, native.message, native.www_authenticate = (
            reference.error,
            reference.message,
            reference.www_authenticate,
        )
    assert native == reference, f"{mode}: {case.name}"
    if reference.status == 200 and case.path.startswith("/v2/models/"):
        assert reference.model_sees.get(contract.TENANT_HEADER), (
            "the model saw no identity: the case proves nothing"
        )


@pytest.mark.parametrize("mode", ["auto", "native", "http", "auto-http", "http-admit"])
def test_same_quota_decisions(gateways: Gateways, mode: str) -> None:
    """A per-user quota of METERED a day (native: Envoy's local rate limit; ext_authz: meshgate
    ratelimit): the same requests pass, the same one is refused, with the same answer."""
    path = "/v2/models/metered/infer"
    seen = []
    for _ in range(METERED + 1):
        token = mint(tenant="globex", tier=None, sub=f"metered-{mode}")  # (a user of its own per mode)
        answers = []
        for port in (gateways.ports["ext_authz"], gateways.ports[mode]):
            with httpx.Client(timeout=10.0, trust_env=False) as client:
                response = client.post(f"http://127.0.0.1:{port}{path}", json=INFER, headers=_bearer(token))
            body = response.content if response.status_code != 200 else b""
            answers.append((response.status_code, body, response.headers.get("x-envoy-ratelimited")))
        assert answers[1] == answers[0], f"{mode}: request {len(seen) + 1}"
        seen.append(answers[0][0])
    assert seen == [200] * METERED + [429]
