"""The virtual host's matcher tree (meshgate/xds/_route_tree.py): when it is built, what each branch
holds, and that the linear order comes back out of it. (That Envoy picks the same route through it as
through the list: tests/e2e/test_route_tree.py.)"""

from __future__ import annotations

import pytest
from envoy.config.route.v3 import route_components_pb2 as rc

from meshgate import contract
from meshgate.xds import _route_tree as route_tree
from meshgate.xds._route_tree import TREE_MIN_MODELS, flat_routes, keyed, tree_routes, virtual_host
from meshgate.xds._routes import NO_ROUTE, route_configuration
from tests.unit.test_xds_support import model, policy


def _models(n: int) -> list[dict[str, object]]:
    return [model(f"m{i}", {"v1": 100}, port=9000 + 10 * i) for i in range(n)]


def _route_list(on_match: object) -> list[str]:
    found = rc.RouteList()
    assert on_match.action.typed_config.Unpack(found)  # type: ignore[attr-defined]
    return [r.name for r in found.routes]


def test_a_few_models_keep_the_list_more_get_the_tree() -> None:
    few = route_configuration(policy(*_models(TREE_MIN_MODELS - 1))).virtual_hosts[0]
    assert not few.HasField("matcher") and few.routes[-1].name == NO_ROUTE
    many = route_configuration(policy(*_models(TREE_MIN_MODELS))).virtual_hosts[0]
    assert many.HasField("matcher") and not many.routes


def test_the_tree_gives_back_the_linear_order(monkeypatch: pytest.MonkeyPatch) -> None:
    p = policy(
        model("rest", {"v1": 90, "v2": 10}, ab=[{"header": "x-exp", "value": "b", "version": "v2"}]),
        model("chat", {"v1": 100}, protocol="openai", port=9100),
        model("det", {"v1": 100}, protocol="v2-grpc", port=9200),
        model("rest-2", {"v1": 100}, port=9300),
    )
    tree = route_configuration(p).virtual_hosts[0]
    per_model, no_model = tree_routes(tree)
    assert virtual_host("again", per_model, no_model).matcher == tree.matcher  # it comes back whole
    monkeypatch.setattr(route_tree, "TREE_MIN_MODELS", 1000)
    linear = route_configuration(p).virtual_hosts[0]
    assert tree.HasField("matcher") and not linear.HasField("matcher")
    # the models in the map's order, each one's routes in the list's
    by_model = {m: routes for m, routes in per_model}
    assert [m for m, _ in per_model] != [] and sorted(by_model) == ["chat", "det", "rest", "rest-2"]
    expected = [r for m in by_model for r in linear.routes if r.name.split("|")[0] == m]
    expected += [r for r in linear.routes if r.name.startswith("meshgate|")]
    assert flat_routes(tree) == expected and len(expected) == len(linear.routes)
    assert flat_routes(linear) == list(linear.routes)


def test_each_branch_holds_what_can_match_there() -> None:
    p = policy(
        model("rest", {"v1": 100}),
        model("chat", {"v1": 100}, protocol="openai", port=9100),
        model("det", {"v1": 100}, protocol="v2-grpc", port=9200),
    )
    tree = route_configuration(p).virtual_hosts[0].matcher
    by_path = tree.matcher_tree.prefix_match_map.map
    assert set(by_path) == {"/v2/models/rest", "/v2/models/chat", "/v2/models/det"}
    # under a model's path: all its routes in order, then of the others only the catch-all (the server
    # calls cannot match a path there)
    rest = _route_list(by_path["/v2/models/rest"])
    assert rest[0] == "rest|body_too_large" and rest[-1] == NO_ROUTE
    assert not [n for n in rest if n.startswith("meshgate|server")]
    by_header = tree.on_no_match.matcher.matcher_tree.exact_match_map.map
    # by the header alone (a path under no model): its header routes, up to the one that takes any path
    assert _route_list(by_header["chat"]) == ["chat|canary"]
    assert _route_list(by_header["rest"]) == ["rest|canary"]  # (its path routes cannot match there)
    assert _route_list(by_header["det"])[-1] == "det|canary"
    assert NO_ROUTE in _route_list(tree.on_no_match.matcher.on_no_match)


def test_a_route_not_keyed_to_its_model_keeps_the_list() -> None:
    header = rc.HeaderMatcher(name=contract.MODEL_HEADER)
    header.string_match.exact = "a"
    by_header = rc.Route(name="a|canary", match=rc.RouteMatch(prefix="/", headers=[header]))
    assert keyed(by_header, "a") and not keyed(by_header, "b")
    assert keyed(rc.Route(match=rc.RouteMatch(path_separated_prefix="/v2/models/a")), "a")
    assert keyed(rc.Route(match=rc.RouteMatch(prefix="/v2/models/a/")), "a")
    loose = rc.Route(name="a|loose", match=rc.RouteMatch(prefix="/v2/models/a"))  # also /v2/models/ab
    assert not keyed(loose, "a")
    anywhere = rc.Route(name="a|anywhere", match=rc.RouteMatch(prefix="/"))
    assert not keyed(anywhere, "a")
    catch = rc.Route(name=NO_ROUTE, match=rc.RouteMatch(prefix="/"))
    models = [(m, [rc.Route(name=f"{m}|x", match=rc.RouteMatch(path_separated_prefix=f"/v2/models/{m}"))])
              for m in "abc"]  # fmt: skip
    assert virtual_host("v", models, [catch]).HasField("matcher")
    host = virtual_host("v", [*models, ("d", [loose])], [catch])
    assert not host.HasField("matcher")
    assert [r.name for r in host.routes] == ["a|x", "b|x", "c|x", "a|loose", NO_ROUTE]
