"""The virtual host's routes, found in a number of steps that does not grow with the number of models.

Envoy matches a route list in order, one route after another, and a gateway matches a request twice
(before and after its decision): a request for the 50th model passed every route of the 49 before it,
~6,200 instructions a request per model, 582,383 in all for a native gateway against 277,737 with one
model (`bench/envoy_instructions.py --models 50`, docs/native.md "Many models"). From `TREE_MIN_MODELS`
models on, the virtual host holds Envoy's matcher tree instead (`VirtualHost.matcher`, the generic
matching API, whose maps are one lookup each):

    :path, longest prefix "/v2/models/<m>"  -> <m>'s routes, then those of no model that may match there
    else x-meshgate-model, exact <m>        -> <m>'s routes keyed by it, up to the one taking any path
    else                                    -> the routes of no model

Envoy picks the route the list would, for every request, because: every route of a model is keyed to
that model alone (a path under `/v2/models/<m>` or `x-meshgate-model` exactly `<m>`; `keyed` checks it,
and a policy whose routes fail it keeps the list); the routes of no model come after every model's in
the list; and only the decision sets `x-meshgate-model` (the listener removes a client's), to the model
the path names when it names one (meshgate/extauthz/target.py, native.lua), so no request carries the
header of one model and the path of another. A path that starts like a model's but names another
(`/v2/models/<m>x`) finds `<m>`'s routes, none of which match it, then the catch-all, as in the list.
Tested against the list on a real Envoy: tests/e2e/test_route_tree.py. `flat_routes` gives the list's
order back to whoever reads the configuration (explain, the consistency check).
"""

from __future__ import annotations

from collections.abc import Sequence

from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.type.matcher.v3 import http_inputs_pb2, string_pb2
from xds.core.v3 import extension_pb2
from xds.type.matcher.v3 import matcher_pb2

from meshgate import contract

from ._pb import pack

__all__ = ["TREE_MIN_MODELS", "flat_routes", "keyed", "tree_routes", "virtual_host"]

TREE_MIN_MODELS = 3
"""Fewer models keep the list: with one model the tree cost more (native 280,044 instructions a request
against 277,737); from two on, the list costs ~6,200 a request per model passed."""

Matcher = matcher_pb2.Matcher
_MODELS = "/v2/models/"


def virtual_host(
    name: str, per_model: Sequence[tuple[str, Sequence[rc.Route]]], no_model: Sequence[rc.Route]
) -> rc.VirtualHost:
    """The virtual host serving each model's routes (in `per_model`'s order), then `no_model`'s."""
    host = rc.VirtualHost(name=name, domains=["*"])
    if len(per_model) < TREE_MIN_MODELS or not all(keyed(r, m) for m, rs in per_model for r in rs):
        host.routes.extend([r for _, rs in per_model for r in rs])
        host.routes.extend(no_model)
        return host
    by_path, by_header = {}, {}
    for model, routes in per_model:
        key = _MODELS + model
        by_path[key] = _route_list([*routes, *(r for r in no_model if _may_match_under(r, key))])
        # a path under no model: only the routes keyed by the header can match, up to its catch-all
        own = [r for r in routes if _by_header(r, model)]
        caught = next((i for i, r in enumerate(own) if _catches_all(r, model)), None)
        by_header[model] = _route_list(own[: caught + 1] if caught is not None else [*own, *no_model])
    host.matcher.CopyFrom(
        Matcher(
            matcher_tree=Matcher.MatcherTree(
                input=_header_input(":path"), prefix_match_map=Matcher.MatcherTree.MatchMap(map=by_path)
            ),
            on_no_match=matcher_pb2.Matcher.OnMatch(
                matcher=Matcher(
                    matcher_tree=Matcher.MatcherTree(
                        input=_header_input(contract.MODEL_HEADER),
                        exact_match_map=Matcher.MatcherTree.MatchMap(map=by_header),
                    ),
                    on_no_match=_route_list(no_model),
                )
            ),
        )
    )
    return host


def keyed(route: rc.Route, model: str) -> bool:
    """Whether `route` can only match a request for `model`: by `x-meshgate-model` exactly `model`, or by
    a path under `/v2/models/<model>` (a separated prefix, or a prefix or path past its `/`)."""
    match = route.match
    if _by_header(route, model):
        return True
    base = _MODELS + model
    kind = match.WhichOneof("path_specifier")
    if kind == "path_separated_prefix":
        prefix: str = match.path_separated_prefix
        return prefix == base or prefix.startswith(base + "/")
    if kind in ("prefix", "path"):
        return bool(getattr(match, kind).startswith(base + "/"))
    return False


def _catches_all(route: rc.Route, model: str) -> bool:
    """Whether `route` matches every request whose x-meshgate-model is `model` (the header's canary)."""
    return bool(route.match == rc.RouteMatch(prefix="/", headers=[_model_header(model)]))


def _model_header(model: str) -> rc.HeaderMatcher:
    return rc.HeaderMatcher(name=contract.MODEL_HEADER, string_match=string_pb2.StringMatcher(exact=model))


def _may_match_under(route: rc.Route, key: str) -> bool:
    """Whether `route` may match a path that starts with `key` (True where its match cannot tell)."""
    match = route.match
    kind = match.WhichOneof("path_specifier")
    if kind == "path":
        return bool(match.path.startswith(key))
    if kind in ("prefix", "path_separated_prefix"):
        prefix: str = getattr(match, kind)
        return key.startswith(prefix) or prefix.startswith(key)
    return True


def _by_header(route: rc.Route, model: str) -> bool:
    """Whether `route` matches only requests whose x-meshgate-model is exactly `model`."""
    for header in route.match.headers:
        exact = header.string_match.WhichOneof("match_pattern") == "exact"
        if header.name == contract.MODEL_HEADER and not header.invert_match and exact:
            return bool(header.string_match.exact == model)
    return False


def flat_routes(host: rc.VirtualHost) -> list[rc.Route]:
    """The host's routes in the linear list's order (models in the tree's order), whichever its form."""
    if not host.HasField("matcher"):
        return list(host.routes)
    per_model, no_model = tree_routes(host)
    return [r for _, routes in per_model for r in routes] + no_model


def tree_routes(host: rc.VirtualHost) -> tuple[list[tuple[str, list[rc.Route]]], list[rc.Route]]:
    """What `virtual_host` built `host`'s tree from: (model, its routes) in the tree's order, and the
    routes of no model."""
    no_model = rc.RouteList()
    host.matcher.on_no_match.matcher.on_no_match.action.typed_config.Unpack(no_model)
    per_model = []
    for key, on_match in host.matcher.matcher_tree.prefix_match_map.map.items():
        found = rc.RouteList()
        on_match.action.typed_config.Unpack(found)
        after = sum(1 for r in no_model.routes if _may_match_under(r, key))  # (see virtual_host)
        per_model.append((key.removeprefix(_MODELS), list(found.routes[: len(found.routes) - after])))
    return per_model, list(no_model.routes)


def _route_list(routes: Sequence[rc.Route]) -> matcher_pb2.Matcher.OnMatch:
    return matcher_pb2.Matcher.OnMatch(
        action=extension_pb2.TypedExtensionConfig(
            name="routes", typed_config=pack(rc.RouteList(routes=routes))
        )
    )


def _header_input(name: str) -> extension_pb2.TypedExtensionConfig:
    return extension_pb2.TypedExtensionConfig(
        name="request-headers",
        typed_config=pack(http_inputs_pb2.HttpRequestHeaderMatchInput(header_name=name)),
    )
