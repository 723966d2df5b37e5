"""The README's quickstart, run as a user would: one command, a real answer through the gateway."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

from tests.harness.procs import wait_until

QUICKSTART = Path(__file__).parents[2] / "examples" / "quickstart.py"
ANSWER = re.compile(
    r"resnet answered through the gateway: OUTPUT0 = \[(\d+), (\d+), (\d+), (\d+)\] \(model version (v\d)\)"
)


def _check_answer(text: str) -> str:
    found = ANSWER.search(text)
    assert found, text
    values, version = [int(v) for v in found.groups()[:4]], found.group(5)
    offset = {"v1": 100, "v2": 200}[version]  # the demo model: input * 2 + 100 * version
    assert values == [2 + offset, 4 + offset, 6 + offset, 80 + offset]
    return version


def test_quickstart_once_answers_through_the_gateway() -> None:
    done = subprocess.run(
        [sys.executable, str(QUICKSTART), "--once", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    _check_answer(done.stdout)
    assert "the same request without a token: HTTP 401" in done.stdout
    assert "curl -s http://127.0.0.1:" in done.stdout


def test_quickstart_ctrl_c_stops_everything(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "quickstart.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, str(QUICKSTART), "--port", str(port)], stdout=out, stderr=out
        )
    try:
        wait_until(lambda: "Ctrl-C stops everything" in log.read_text(), 300, what="quickstart running")
        _check_answer(log.read_text())
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "the gateway Envoy is still listening after Ctrl-C"
