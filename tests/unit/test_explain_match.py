"""meshgate/xds/match.py: Envoy's route and rate limit semantics for what meshgate emits, as `meshgate
explain` reads them (the e2e test checks them against a real Envoy; these are the edges)."""

from __future__ import annotations

import pytest
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.type.matcher.v3 import metadata_pb2, string_pb2
from envoy.type.v3 import range_pb2

from meshgate.xds.match import Unknown, descriptors, header_matches, route

A = rc.RateLimit.Action


def config(*routes: rc.Route) -> route_pb2.RouteConfiguration:
    return route_pb2.RouteConfiguration(virtual_hosts=[rc.VirtualHost(name="v", domains=["*"], routes=routes)])


def to(name: str, match: rc.RouteMatch, cluster: str = "c") -> rc.Route:
    return rc.Route(name=name, match=match, route=rc.RouteAction(cluster=cluster))


def req(path: str, **headers: str) -> dict[str, str]:
    return {":path": path, ":method": "POST", **{k.replace("_", "-"): v for k, v in headers.items()}}


def test_header_matchers_as_envoy_reads_them() -> None:
    absent = rc.HeaderMatcher(name="content-length", present_match=False)
    assert header_matches(absent, req("/")) and not header_matches(absent, req("/", content_length="3"))
    large = rc.HeaderMatcher(name="content-length", range_match=range_pb2.Int64Range(start=11, end=1 << 62))
    assert header_matches(large, req("/", content_length="11"))
    assert not header_matches(large, req("/", content_length="10"))
    assert not header_matches(large, req("/", content_length="ten"))
    post = rc.HeaderMatcher(name=":method", string_match=string_pb2.StringMatcher(exact="POST"), invert_match=True)
    assert not header_matches(post, req("/"))


def test_the_first_matching_route_and_what_it_cannot_read() -> None:
    versioned = to("pinned", rc.RouteMatch(path_separated_prefix="/v2/models/m/versions/2"), "m2")
    model = to("model", rc.RouteMatch(path_separated_prefix="/v2/models/m"), "m")
    found = route(config(versioned, model), req("/v2/models/m/versions/2/infer"))
    assert found is not None and (found.name, found.clusters) == ("pinned", (("m2", 100),))
    assert route(config(versioned, model), req("/v2/models/mx/infer")) is None  # a separated prefix
    query = to("q", rc.RouteMatch(prefix="/", query_parameters=[rc.QueryParameterMatcher(name="a")]))
    with pytest.raises(Unknown):
        route(config(query), req("/"))
    # a native fast copy (jwt_authn's metadata, meshgate/xds/_fast.py) is read as the route after it
    jwt = metadata_pb2.MetadataMatcher(filter="envoy.filters.http.jwt_authn")
    fast = to("model|fast", rc.RouteMatch(path_separated_prefix="/v2/models/m", dynamic_metadata=[jwt]), "m")
    found = route(config(fast, model), req("/v2/models/m/infer"))
    assert found is not None and found.name == "model"
    other = to("other", rc.RouteMatch(prefix="/", dynamic_metadata=[metadata_pb2.MetadataMatcher(filter="x")]))
    with pytest.raises(Unknown):
        route(config(other), req("/"))


def test_descriptors_skip_a_missing_header_and_read_hits_from_metadata() -> None:
    limits = [
        rc.RateLimit(actions=[A(generic_key=A.GenericKey(descriptor_key="quota", descriptor_value="q")),
                              A(request_headers=A.RequestHeaders(header_name="x-meshgate-user", descriptor_key="user"))]),
        rc.RateLimit(actions=[A(generic_key=A.GenericKey(descriptor_key="quota", descriptor_value="t"))],
                     hits_addend=rc.RateLimit.HitsAddend(format="%DYNAMIC_METADATA(ns:meshgate:tokens)%")),
        rc.RateLimit(actions=[A(generic_key=A.GenericKey(descriptor_value="x"))],
                     hits_addend=rc.RateLimit.HitsAddend(format="%DYNAMIC_METADATA(usage:tokens)%"),
                     apply_on_stream_done=True),
    ]  # fmt: skip
    found = route(config(rc.Route(name="r", match=rc.RouteMatch(prefix="/"),
                                  route=rc.RouteAction(cluster="c", rate_limits=limits))), req("/"))  # fmt: skip
    assert found is not None
    made, notes = descriptors(found, req("/"), {"ns": {"meshgate": {"tokens": 42}}}, "c")
    assert [(d.entries, d.hits, d.on_stream_done) for d in made] == [
        ((("quota", "t"),), 42, False), ((("generic_key", "x"),), None, True)]
    assert notes == ["not sent (x-meshgate-user is not set): generic_key, request_headers"]
