"""The harness proves itself: real Envoy in front of a real KServe model, REST and gRPC, counted by Envoy;
the validate helper rejects broken bootstraps; Redis stops and comes back; failures carry log tails."""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests.harness import bootstraps as b
from tests.harness.envoy import Envoy, validate, write_bootstrap
from tests.harness.model_server import ModelServer
from tests.harness.procs import Proc, StartupError, free_port, wait_until
from tests.harness.redis import RedisServer

VALUES = [1, 2, 3, 40]


def gateway_bootstrap(host: str, rest_port: int, grpc_port: int) -> dict[str, Any]:
    """Listener ``ingress`` (port 0, HTTP/1.1 and h2c): gRPC inference to model_grpc (h2), rest to REST."""
    routes = [b.route(b.GRPC_INFERENCE_PREFIX, "model_grpc"), b.route("/", "model_rest")]
    clusters = [
        b.static_cluster("model_rest", host, rest_port),
        b.static_cluster("model_grpc", host, grpc_port, http2=True),
    ]
    return b.bootstrap([b.hcm_listener("ingress", routes)], clusters)


def unconnected_bootstrap() -> dict[str, Any]:
    """The gateway bootstrap with upstream ports nobody listens on: enough for config checks."""
    return gateway_bootstrap("127.0.0.1", free_port(), free_port())


def infer_http(
    url: str, model: str, values: list[int], headers: dict[str, str]
) -> tuple[list[int], dict[str, Any]]:
    client = httpclient.InferenceServerClient(url=url)
    try:
        tensor = httpclient.InferInput("INPUT0", [1, len(values)], "INT32")
        tensor.set_data_from_numpy(np.array([values], dtype=np.int32))
        result = client.infer(model, [tensor], headers=headers)
        return result.as_numpy("OUTPUT0").ravel().tolist(), result.get_response()
    finally:
        client.close()


def infer_grpc(url: str, model: str, values: list[int], headers: dict[str, str]) -> tuple[list[int], Any]:
    client = grpcclient.InferenceServerClient(url=url)
    try:
        assert client.is_model_ready(model)
        tensor = grpcclient.InferInput("INPUT0", [1, len(values)], "INT32")
        tensor.set_data_from_numpy(np.array([values], dtype=np.int32))
        result = client.infer(model, [tensor], headers=headers)
        return result.as_numpy("OUTPUT0").ravel().tolist(), result.get_response()
    finally:
        client.close()


@pytest.fixture
def gateway(model_server: ModelServer, envoy_factory: Callable[..., Envoy]) -> tuple[Envoy, str]:
    envoy = envoy_factory(
        gateway_bootstrap(model_server.host, model_server.http_port, model_server.grpc_port)
    )
    return envoy, f"127.0.0.1:{envoy.listener_port('ingress')}"


def test_rest_inference_through_envoy(gateway: tuple[Envoy, str], model_server: ModelServer) -> None:
    envoy, address = gateway
    before = envoy.stat("cluster.model_rest.upstream_rq_total")

    outputs, response = infer_http(address, "demo", VALUES, {"x-meshgate-tenant": "acme"})

    assert outputs == [102, 104, 106, 180] == model_server.expected(VALUES)
    assert response["model_name"] == "demo"
    assert response["model_version"] == "1"
    assert response["parameters"]["echo.x-meshgate-tenant"] == "acme"  # the header reached the upstream
    assert envoy.stat("cluster.model_rest.upstream_rq_total") > before
    assert envoy.stat("cluster.model_rest.upstream_rq_200") >= 1
    assert envoy.stat("cluster.model_grpc.upstream_rq_total") == 0


def test_grpc_inference_through_envoy(gateway: tuple[Envoy, str], model_server: ModelServer) -> None:
    envoy, address = gateway

    outputs, response = infer_grpc(address, "demo", VALUES, {"x-meshgate-tenant": "acme"})

    assert outputs == [102, 104, 106, 180] == model_server.expected(VALUES)
    assert response.model_name == "demo"
    assert response.model_version == "1"
    assert response.parameters["echo.x-meshgate-tenant"].string_param == "acme"
    stats = envoy.stats()
    assert stats["cluster.model_grpc.upstream_rq_total"] >= 2  # ModelReady + ModelInfer
    assert stats["cluster.model_grpc.upstream_cx_http2_total"] >= 1  # h2 to the upstream
    assert stats["http.ingress.downstream_cx_http2_total"] >= 1  # h2c accepted downstream
    assert stats["cluster.model_rest.upstream_rq_total"] == 0


def test_static_config_is_visible_in_admin(envoy_factory: Callable[..., Envoy]) -> None:
    envoy = envoy_factory(unconnected_bootstrap())
    dump = envoy.config_dump(resource="static_clusters")
    assert {c["cluster"]["name"] for c in dump["configs"]} == {"model_rest", "model_grpc"}
    assert {c["name"] for c in envoy.clusters()["cluster_statuses"]} >= {"model_rest", "model_grpc"}
    assert envoy.listener_port("ingress") > 0


def test_envoy_startup_failure_reports_envoys_error(envoy_factory: Callable[..., Envoy]) -> None:
    broken = unconnected_bootstrap()
    broken["static_resources"]["clusters"][0]["conect_timeout"] = "1s"

    with pytest.raises(StartupError) as caught:
        envoy_factory(broken)

    assert "exited while waiting for" in str(caught.value)
    # only the field name: protobuf inserts random extra spaces into its messages ("no  such field")
    assert "'conect_timeout'" in str(caught.value)


def test_model_versions_are_told_apart(model_server_factory: Callable[..., ModelServer]) -> None:
    v1 = model_server_factory("iris", "1", wait=False)
    v2 = model_server_factory("iris", "2", wait=False)
    for server in (v1, v2):
        server.wait_ready()

    out1, resp1 = infer_http(f"127.0.0.1:{v1.http_port}", "iris", VALUES, {})
    out2, resp2 = infer_http(f"127.0.0.1:{v2.http_port}", "iris", VALUES, {})

    assert out1 == [102, 104, 106, 180]
    assert out2 == [202, 204, 206, 280]
    assert (resp1["model_version"], resp2["model_version"]) == ("1", "2")


def test_validate_accepts_the_gateway_bootstrap_and_rejects_broken_ones(tmp_path: Path) -> None:
    good = unconnected_bootstrap()
    ok, output = validate(write_bootstrap(good, tmp_path / "good.yaml"))
    assert ok, output

    dangling = copy.deepcopy(good)
    hcm = dangling["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["route_config"]["virtual_hosts"][0]["routes"][1]["route"]["cluster"] = "no_such_cluster"
    ok, output = validate(write_bootstrap(dangling, tmp_path / "dangling.yaml"))
    assert not ok
    assert "unknown cluster 'no_such_cluster'" in output

    misspelt = copy.deepcopy(good)
    misspelt["static_resources"]["clusters"][0]["conect_timeout"] = "1s"
    ok, output = validate(write_bootstrap(misspelt, tmp_path / "misspelt.yaml"))
    assert not ok
    assert "conect_timeout" in output


def test_redis_stops_and_comes_back_on_the_same_port(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url, socket_timeout=2)
    assert client.ping()
    assert client.set("greeting", "hello")
    assert client.get("greeting") == b"hello"

    redis_server.stop()
    assert not redis_server.alive()
    with pytest.raises(redis.exceptions.ConnectionError):
        client.ping()

    port = redis_server.port
    redis_server.start()
    assert redis_server.port == port
    assert client.ping()  # the client reconnects to the same URL
    assert client.get("greeting") is None  # no persistence: a fresh server
    assert client.set("greeting", "again")
    assert client.get("greeting") == b"again"


def test_startup_failure_reports_the_log_tail(tmp_path: Path) -> None:
    code = "import sys; print('about to fail', file=sys.stderr); sys.exit(3)"
    proc = Proc("doomed", [sys.executable, "-c", code], log_dir=tmp_path).start()
    try:
        with pytest.raises(StartupError) as caught:
            wait_until(lambda: False, 30, what="a condition that never holds", proc=proc)
    finally:
        proc.stop()
    message = str(caught.value)
    assert "doomed exited while waiting for a condition that never holds" in message
    assert "exited with 3" in message
    assert "about to fail" in message


def test_stop_kills_a_process_that_ignores_sigterm(tmp_path: Path) -> None:
    code = (
        "import signal\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ignoring', flush=True)\n"
        "while True:\n"
        "    signal.pause()  # until a signal it does not ignore: the SIGKILL\n"
    )
    proc = Proc("stubborn", [sys.executable, "-c", code], log_dir=tmp_path).start()
    # a whole line: the log's first line is the argv, which contains the word too
    wait_until(
        lambda: "ignoring" in proc.tail().splitlines(), 30, what="stubborn to install its handler", proc=proc
    )

    assert proc.stop(timeout=0.5) == -9  # SIGTERM ignored, SIGKILL after the deadline
    assert not proc.alive()


def test_any_wait_fails_at_once_when_a_started_process_dies_unasked(tmp_path: Path) -> None:
    """A wait that names no process still ends as soon as any process the test started exits without
    being stopped or signalled through the harness (it would otherwise sit out its whole deadline)."""
    doomed = Proc("doomed-helper", [sys.executable, "-c", "print('bye', flush=True); raise SystemExit(4)"],
                  log_dir=tmp_path).start()
    try:
        with pytest.raises(StartupError) as caught:
            wait_until(lambda: False, 600, what="something unrelated")  # no proc= given
    finally:
        doomed.stop()
    message = str(caught.value)
    assert "doomed-helper exited while waiting for something unrelated" in message and "exited with 4" in message


def test_a_process_ended_on_purpose_does_not_fail_later_waits(tmp_path: Path) -> None:
    proc = Proc("sleeper", [sys.executable, "-c", "import signal; signal.pause()"], log_dir=tmp_path).start()
    proc.kill()
    wait_until(lambda: not proc.alive(), 30, what="the sleeper gone")
    assert wait_until(lambda: "done", 5, what="an unrelated condition") == "done"
