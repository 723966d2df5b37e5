"""Policy files written badly to a live `meshgate serve`, and first policies that cannot be served.

- Truncating the live file (0 bytes) is refused: counted invalid, last_reload_ok 0, still SERVING.
- Every line prefix of examples/policy.yaml written the torn way (truncate, write the prefix, then the
  rest) is never applied: only the finished file is (its sha256 is the only one logged as live).
- A first policy that parses but does not compile: exit 1 with one clear line, no traceback, with the
  memory store and with Redis configured; the same for a ratelimit config directory that does not load.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import socket
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.harness.meshgate import Meshgate
from tests.harness.procs import free_port, http_get, wait_until
from tests.harness.stack import Stack

ROOT = Path(__file__).parents[2]
EXAMPLE_PATH = ROOT / "examples" / "policy.yaml"
EXAMPLE = EXAMPLE_PATH.read_text()
LINES = EXAMPLE.splitlines(keepends=True)
VARIANT = EXAMPLE.replace("name: globex", "name: initech").replace("[acme, globex]", "[acme, initech]")
SERVING = health_pb2.HealthCheckResponse.SERVING
LIVE = re.compile(r"policy generation (\d+) live from .* \(sha256 ([0-9a-f]+)\)")


def _metric(mg: Meshgate, name: str, labels: str = "") -> float:
    status, body = http_get(mg.metrics_url)
    assert status == 200
    key = f"{name}{{{labels}}}" if labels else name
    for line in body.decode().splitlines():
        if line.startswith(key + " "):
            return float(line.split()[-1])
    return 0.0


def _health(mg: Meshgate) -> int:
    with grpc.insecure_channel(mg.address("extauthz")) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        return int(reply.status)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _live(mg: Meshgate) -> list[tuple[int, str]]:
    """(generation, sha256 prefix) of every policy the process made live, in order."""
    return [(int(g), d) for g, d in LIVE.findall(mg.proc.tail(100_000))]


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def test_truncating_the_live_policy_is_refused(
    meshgate_factory: Callable[..., Meshgate], tmp_path: Path
) -> None:
    path = tmp_path / "policy.yaml"
    shutil.copy(ROOT / "examples" / "policy.yaml", path)
    mg = meshgate_factory(path, extra_args=["--reload-settle", "0.2"])
    assert _live(mg) == [(1, _digest(EXAMPLE))]

    path.open("w").close()  # `> policy.yaml`, and nothing written after it
    wait_until(
        lambda: _metric(mg, "meshgate_policy_reloads_total", 'result="invalid"') >= 1,
        15,
        what="the empty policy refused",
        proc=mg.proc,
    )
    assert _metric(mg, "meshgate_policy_generation") == 1
    assert _metric(mg, "meshgate_policy_last_reload_ok") == 0
    assert _metric(mg, "meshgate_policy_reloads_total", 'result="ok"') == 1  # the start only
    assert _health(mg) == SERVING
    assert "the policy is empty" in mg.proc.tail(200)

    _write_atomic(path, VARIANT)
    wait_until(lambda: _metric(mg, "meshgate_policy_generation") == 2, 15, what="a good policy", proc=mg.proc)
    assert _metric(mg, "meshgate_policy_last_reload_ok") == 1
    assert _live(mg) == [(1, _digest(EXAMPLE)), (2, _digest(VARIANT))]


def test_no_line_prefix_written_the_torn_way_is_applied(
    meshgate_factory: Callable[..., Meshgate], tmp_path: Path
) -> None:
    """85 torn rewrites of examples/policy.yaml in place: each truncates the file, writes a prefix (a
    watcher can read it now), then the rest. The settle time (3 s here, 1 s by default) is far longer
    than a writer takes between the two writes, so only the finished file may be applied."""
    path = tmp_path / "policy.yaml"
    path.write_text(VARIANT)
    mg = meshgate_factory(path, extra_args=["--reload-settle", "3"])
    assert _live(mg) == [(1, _digest(VARIANT))]

    for n in range(len(LINES)):
        with path.open("w") as f:  # truncates
            f.write("".join(LINES[:n]))
            f.flush()  # the prefix is the file now
            f.write("".join(LINES[n:]))

    wait_until(lambda: len(_live(mg)) >= 2, 20, what="the finished policy live", proc=mg.proc)
    assert _live(mg) == [(1, _digest(VARIANT)), (2, _digest(EXAMPLE))]
    assert _metric(mg, "meshgate_policy_reloads_total", 'result="ok"') == 2  # the start, the finished file
    assert _metric(mg, "meshgate_policy_reloads_total", 'result="invalid"') == 0  # no prefix was parsed


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_a_first_policy_that_does_not_compile_exits_1_with_a_clear_error(
    harness: Stack, tmp_path: Path, store: str
) -> None:
    """It parses (validate says ok) but xds cannot read the gateway certificate it names."""
    text = EXAMPLE.replace(
        "gateway:\n  port: 8080\n",
        f"gateway:\n  port: 8080\n  tls: {{cert_file: {tmp_path}/missing.crt, key_file: {tmp_path}/missing.key}}\n",
    )
    assert text != EXAMPLE
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    redis_url = f"redis://127.0.0.1:{free_port()}/0" if store == "redis" else None  # never reached
    mg = harness.add(Meshgate(path, workdir=tmp_path, redis_url=redis_url))
    mg.proc.start()
    assert mg.proc.wait_exit(20) == 1
    log = mg.proc.tail(200)
    assert (
        f"cannot start: policy {path} is valid but xds could not compile it: ValueError: cannot read certificate "
        f"file '{tmp_path}/missing.crt': No such file or directory"
    ) in log
    assert "Traceback" not in log
    assert not mg.ready_file.exists()


def test_a_ratelimit_config_directory_that_does_not_load_exits_1(harness: Stack, tmp_path: Path) -> None:
    limits = tmp_path / "limits"
    limits.mkdir()
    (limits / "broken.yaml").write_text("domain: edge\ndescriptors: [{key: a, rate_limit: {unit: eon}}]\n")
    mg = harness.add(
        Meshgate(
            ROOT / "examples" / "policy.yaml",
            workdir=tmp_path,
            extra_args=["--ratelimit-config", str(limits)],
        )
    )
    mg.proc.start()
    assert mg.proc.wait_exit(20) == 1
    log = mg.proc.tail(200)
    assert f"cannot start: ratelimit config rejected: {limits / 'broken.yaml'}" in log
    assert "Traceback" not in log


def test_serve_refuses_to_start_naming_what_it_cannot_use(harness: Stack, tmp_path: Path) -> None:
    """A port in use, a Redis URL redis-py cannot read, TLS files that are no certificate, a ready file
    in no directory: exit 1 at once with one line naming the flag or the address (gRPC said only
    "Failed to bind", others were tracebacks), the Redis password hidden."""
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    taken = f"127.0.0.1:{busy.getsockname()[1]}"
    cases = {
        "xds port in use": (["--xds", taken], f"cannot start: cannot listen on {taken} (xds): in use"),
        "metrics port in use": (["--metrics", taken], f"cannot start: cannot listen on {taken} (metrics): "),
        "a Redis URL of no scheme it knows": (
            ["--redis-url", "bogus://:s3cret@x/0"], "cannot start: --redis-url bogus://:***@x/0: Redis URL must"),
        "TLS files that are not PEM": (
            ["--tls-cert", str(EXAMPLE_PATH), "--tls-key", str(EXAMPLE_PATH)],
            f"cannot start: TLS files {EXAMPLE_PATH}, {EXAMPLE_PATH} unusable: "),
        "a ready file in no directory": (
            ["--ready-file", str(tmp_path / "no" / "r.json")], "cannot start: --ready-file "),
    }  # fmt: skip
    try:
        for name, (args, expected) in cases.items():
            mg = harness.add(
                Meshgate(EXAMPLE_PATH, workdir=tmp_path / name.replace(" ", "-"), extra_args=args)
            )
            mg.proc.start()
            assert mg.proc.wait_exit(20) == 1, name
            said = [line for line in mg.proc.tail(200).splitlines() if not line.startswith("--- start")]
            log = "\n".join(said)  # (what meshgate wrote: the harness's own line repeats the command)
            assert expected in log and "Traceback" not in log and "s3cret" not in log, name
    finally:
        busy.close()
