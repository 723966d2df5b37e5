"""meshgate on one machine: KServe models, meshgate, Envoy from meshgate's ADS, and a real request.

    python examples/quickstart.py            # start everything, send a request, keep running (Ctrl-C stops)
    python examples/quickstart.py --once     # start, send, print, stop (what the tests run)

What it starts, every process on 127.0.0.1 and stopped by its PID when the quickstart ends:
  - a local JWT issuer (an RSA key made now, its JWKS served over HTTP) standing in for your IdP;
  - a backend for every model version of the policy (examples/quickstart_models.py): an iris classifier
    trained at start (scikit-learn) on KServe's ModelServer, and an OpenAI-compatible chat stand-in;
  - `meshgate serve` with the policy (examples/quickstart-policy.yaml, its backend ports rewritten to the
    servers started here, the gateway on 127.0.0.1);
  - Envoy, bootstrapped by `meshgate envoy-bootstrap`: everything else it learns over ADS.
Then it mints a token for tenant acme, classifies three flowers through the gateway with tritonclient,
asks the chat model one question, and prints the answers, meshgate's ports and the commands to go on by
hand. Its temporary directory (logs, policy) is removed on a clean exit and kept, and printed, on failure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import numpy as np
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa

from meshgate import binaries

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "examples" / "quickstart_models.py"
HOST = "127.0.0.1"
IRIS_SAMPLES = [[5.1, 3.5, 1.4, 0.2], [5.9, 3.0, 4.2, 1.5], [6.7, 3.0, 5.2, 2.3]]
"""Three flowers (sepal length, sepal width, petal length, petal width in cm): one of each species."""
ISSUER_PATH = "/demo"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


class StartupFailed(RuntimeError):
    """A process exited, or a condition was not reached in time: one line for the user."""


def wait_for(what: str, check: Any, timeout: float, procs: list[subprocess.Popen[bytes]]) -> Any:
    """Poll `check` until it returns something truthy; fail at once when one of `procs` exits."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise StartupFailed(
                    f"{Path(str(proc.args[1] if len(proc.args) > 1 else proc.args[0])).name} "
                    f"exited with {proc.returncode} while waiting for {what}"
                )
        try:
            result = check()
        except Exception as exc:
            last = exc
        else:
            if result:
                return result
        time.sleep(0.1)
    raise StartupFailed(
        f"timed out after {timeout:g}s waiting for {what}" + (f" (last: {last})" if last else "")
    )


class Issuer:
    """A throwaway JWT issuer: an RSA key and its JWKS over HTTP."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        jwks = json.dumps({"keys": [{**jwk, "kid": "quickstart", "use": "sig", "alg": "RS256"}]}).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != f"{ISSUER_PATH}/jwks.json":
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("cache-control", "max-age=300")
                self.end_headers()
                self.wfile.write(jwks)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((HOST, 0), Handler)
        self.url = f"http://{HOST}:{self.server.server_port}{ISSUER_PATH}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def mint(self, *, tenant: str, user: str, roles: list[str], audience: str, ttl: int = 3600) -> str:
        now = int(time.time())
        claims = {
            "iss": self.url,
            "aud": audience,
            "sub": user,
            "tenant": tenant,
            "roles": roles,
            "iat": now,
            "nbf": now,
            "exp": now + ttl,
        }
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": "quickstart"})

    def close(self) -> None:
        self.server.shutdown()


class Stack:
    """Processes started here, stopped in reverse order by PID."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("wb")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def start_models(stack: Stack, policy: dict[str, Any]) -> None:
    """Start a backend for every version of every model (examples/quickstart_models.py); point the
    policy's endpoints at them."""
    pending = []
    for model in policy.get("models", []):
        for version in model["versions"]:
            version.pop("kserve", None)
            name = f"model-{model['name']}-{version['name']}"
            if model.get("protocol", "v2-rest") == "openai":
                port = free_port()
                version["endpoints"] = [f"{HOST}:{port}"]
                stack.start(
                    name, [sys.executable, str(MODELS), "chat", "--model", model["name"], "--port", str(port)]
                )
                pending.append(f"http://{HOST}:{port}/health")
                continue
            http_port, grpc_port = free_port(), free_port()
            grpc = model.get("protocol") == "v2-grpc"
            version["endpoints"] = [f"{HOST}:{grpc_port if grpc else http_port}"]
            argv = [
                sys.executable,
                str(MODELS),
                "iris",
                "--model",
                model["name"],
                "--version",
                version["name"],
            ]
            stack.start(name, [*argv, "--http-port", str(http_port), "--grpc-port", str(grpc_port)])
            pending.append(f"http://{HOST}:{http_port}/v2/health/ready")
    for url in pending:
        wait_for(url, lambda url=url: _http_ok(url), 90, stack.procs)


def _http_ok(url: str) -> bool:
    import urllib.request

    with urllib.request.urlopen(url, timeout=2) as reply:  # noqa: S310 - our own localhost server
        return bool(reply.status == 200)


def start_meshgate(stack: Stack, policy_path: Path) -> dict[str, int]:
    ready = stack.workdir / "meshgate.ready.json"
    stack.start(
        "meshgate",
        [
            *binaries.meshgate_argv(),
            "serve",
            "--policy",
            str(policy_path),
            "--extauthz",
            f"{HOST}:0",
            "--extauthz-http",
            f"{HOST}:0",
            "--ratelimit",
            f"{HOST}:0",
            "--xds",
            f"{HOST}:0",
            "--metrics",
            f"{HOST}:0",
            "--ready-file",
            str(ready),
            "--drain-delay",
            "0",
        ],
    )
    ports: dict[str, int] = wait_for("meshgate", lambda: json.loads(ready.read_text()), 60, stack.procs)
    return ports


def start_envoy(stack: Stack, envoy: str, xds_port: int, gateway_port: int) -> int:
    admin_port = free_port()
    bootstrap = subprocess.run(
        [
            *binaries.meshgate_argv(),
            "envoy-bootstrap",
            "--node-id",
            "quickstart",
            "--xds",
            f"{HOST}:{xds_port}",
            "--admin-port",
            str(admin_port),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = stack.workdir / "envoy.yaml"
    path.write_text(bootstrap)
    stack.start(
        "envoy",
        [
            envoy,
            "-c",
            str(path),
            "--disable-hot-restart",
            "--use-dynamic-base-id",
            "--concurrency",
            "1",
            "--log-level",
            "warn",
        ],
    )
    wait_for("the gateway listener from ADS", lambda: _port_open(gateway_port), 60, stack.procs)
    return admin_port


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((HOST, port)) == 0


def infer(gateway: str, token: str, model: str) -> tuple[list[str], str]:
    """Classify IRIS_SAMPLES through the gateway with tritonclient; (species, version that answered)."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(gateway)
    tensor = httpclient.InferInput("INPUT0", [len(IRIS_SAMPLES), 4], "FP32")
    tensor.set_data_from_numpy(np.array(IRIS_SAMPLES, dtype=np.float32))
    result = client.infer(model, [tensor], headers={"authorization": f"Bearer {token}"})
    classes = result.as_numpy("CLASS")
    if classes is None:
        raise RuntimeError(f"no CLASS output in {result.get_response()}")
    species = [("setosa", "versicolor", "virginica")[int(c)] for c in classes.flatten()]
    return species, str(result.get_response().get("model_version", "?"))


def chat(gateway: str, token: str, model: str) -> str:
    """One OpenAI chat completion through the gateway (plain HTTP, as any OpenAI client sends it)."""
    body = json.dumps(
        {"model": model, "messages": [{"role": "user", "content": "What is better?"}], "max_tokens": 16}
    ).encode()
    headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
    request = urllib.request.Request(f"http://{gateway}/v1/chat/completions", data=body, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as reply:  # noqa: S310 - the local gateway
        answer: str = json.loads(reply.read())["choices"][0]["message"]["content"]
    return answer


def status_without_token(gateway: str, model: str) -> int:
    request = urllib.request.Request(
        f"http://{gateway}/v2/models/{model}/infer", data=b"{}", headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:  # noqa: S310
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def prepare_policy(source: Path, issuer: Issuer, gateway_port: int) -> dict[str, Any]:
    policy: dict[str, Any] = yaml.safe_load(source.read_text())
    gateway = policy.setdefault("gateway", {})
    gateway["port"] = gateway_port
    gateway["address"] = HOST  # a laptop demo: the gateway is reachable from this machine only
    for entry in policy.get("issuers", []):
        entry.pop("jwks", None)
        entry.pop("discovery", None)
        entry["issuer"] = issuer.url
        entry["jwks_uri"] = f"{issuer.url}/jwks.json"
    return policy


@dataclass
class Running:
    gateway: str
    token: str
    ports: dict[str, int]
    policy: dict[str, Any]


@contextlib.contextmanager
def running(args: argparse.Namespace) -> Iterator[Running]:
    """Everything started; on a clean exit the temporary directory goes, on a failure it stays (printed)."""
    envoy = binaries.find("envoy")  # before anything starts: a missing binary is one line, at once
    workdir = Path(tempfile.mkdtemp(prefix="meshgate-quickstart-"))
    stack, issuer = Stack(workdir), Issuer()
    failed = True
    try:
        gateway_port = args.port or free_port()
        policy = prepare_policy(Path(args.policy), issuer, gateway_port)
        start_models(stack, policy)
        policy_path = workdir / "policy.yaml"
        policy_path.write_text(yaml.safe_dump(policy, sort_keys=False))
        ports = start_meshgate(stack, policy_path)
        start_envoy(stack, envoy, ports["xds"], gateway_port)
        audience = policy["issuers"][0]["audiences"][0]
        token = issuer.mint(tenant="acme", user="alice", roles=["invoker"], audience=audience)
        yield Running(f"{HOST}:{gateway_port}", token, ports, policy)
        failed = False
    finally:
        stack.stop()
        issuer.close()
        if failed:
            print(f"quickstart failed; the process logs are kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _command(name: str) -> str:
    """How to run an executable of the venv from the current directory, activated or not."""
    try:
        path = Path(binaries.find(name))
    except binaries.MissingExecutable:
        return f"{sys.executable} -m {name}"
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path)


def print_next_steps(run: Running, model: str, chat_model: str | None) -> None:
    gateway, meshgate = run.gateway, _command("meshgate")
    body = json.dumps(
        {"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": IRIS_SAMPLES[0]}]}
    )
    print(
        "meshgate listens on 127.0.0.1: "
        + ", ".join(f"{k} {v}" for k, v in sorted(run.ports.items()) if k != "pid")
    )
    print("\nSend the next requests yourself (the token is a demo token for tenant acme, valid 1 h):")
    print(f"  export TOKEN={run.token}")
    print(
        f'  curl -s http://{gateway}/v2/models/{model}/infer -H "authorization: Bearer $TOKEN" '
        f"-H 'content-type: application/json' -d '{body}'"
    )
    print(
        f"  curl -s -o /dev/null -w '%{{http_code}}\\n' http://{gateway}/v2/models/{model}/infer"
        "  # no token: 401"
    )
    if chat_model is not None:
        chat_body = json.dumps({"model": chat_model, "messages": [{"role": "user", "content": "Why?"}]})
        print(
            f'  curl -s http://{gateway}/v1/chat/completions -H "authorization: Bearer $TOKEN" '
            f"-H 'content-type: application/json' -d '{chat_body}'"
        )
    print("Ask meshgate what it serves:")
    print(f"  {meshgate} status --addr 127.0.0.1:{run.ports['extauthz']}")
    print(f"  {meshgate} models --addr 127.0.0.1:{run.ports['xds']}")
    print(f"  curl -s http://127.0.0.1:{run.ports['metrics']}/metrics | grep meshgate_policy")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--policy", default=str(ROOT / "examples" / "quickstart-policy.yaml"))
    parser.add_argument("--port", type=int, default=8080, help="gateway port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--model", default="iris-classifier", help="a v2-rest model of the policy to call")
    parser.add_argument("--once", action="store_true", help="send the requests, print, stop everything")
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except (binaries.MissingExecutable, StartupFailed) as exc:
        print(f"quickstart: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    with running(args) as run:
        gateway = run.gateway
        species, version = wait_for(
            "an answer through the gateway", lambda: infer(gateway, run.token, args.model), 30, []
        )
        print(
            f"\n{args.model} answered through the gateway: {IRIS_SAMPLES} -> {species}"
            f" (model version {version})"
        )
        chat_model = next((m["name"] for m in run.policy["models"] if m.get("protocol") == "openai"), None)
        if chat_model is not None:
            answer = chat(gateway, run.token, chat_model)
            print(f"{chat_model} answered through the gateway: {answer!r}")
        print(f"the same inference without a token: HTTP {status_without_token(gateway, args.model)}\n")
        print_next_steps(run, args.model, chat_model)
        if args.once:
            return 0
        print("\nRunning; Ctrl-C stops everything the quickstart started.", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                signal.pause()
    return 0


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupt)
    sys.exit(main())
