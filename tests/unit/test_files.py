"""Files a policy or a flag names are read only when regular and bounded (meshgate/files.py): a device
or a huge file named by mistake is refused with its path, not read until memory runs out."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshgate.files import MAX_PEM_BYTES, read_bounded, regular_size
from meshgate.xds import XdsService
from tests.unit.test_xds_support import policy


def test_a_regular_file_within_the_bound_is_read(tmp_path: Path) -> None:
    pem = tmp_path / "cert.pem"
    pem.write_bytes(b"-----BEGIN CERTIFICATE-----\n")
    assert read_bounded(pem) == b"-----BEGIN CERTIFICATE-----\n"
    assert regular_size(pem, 100, "tokenizer") == 28


@pytest.mark.parametrize("name", ["device", "directory", "too large", "missing"])
def test_anything_else_is_refused_with_its_path(tmp_path: Path, name: str) -> None:
    big = tmp_path / "big.pem"
    with big.open("wb") as handle:  # (sparse: no disk used)
        handle.truncate(MAX_PEM_BYTES + 1)
    path = {"device": Path("/dev/zero"), "directory": tmp_path, "too large": big, "missing": tmp_path / "no.pem"}
    why = "No such file or directory" if name == "missing" else "not a regular file of at most 4 MiB"
    with pytest.raises(ValueError, match=f"cannot read key file '{path[name]}': {why}"):
        read_bounded(path[name], what="key file")


def test_a_policy_naming_a_device_as_its_certificate_is_refused_by_xds() -> None:
    """The gateway's TLS files are read by xds for SDS: /dev/zero refuses the compile (a reload keeps
    the policy it had) instead of filling memory."""
    devices = policy(gateway={"port": 8080, "tls": {"cert_file": "/dev/zero", "key_file": "/dev/zero"}})
    with pytest.raises(ValueError, match="cannot read certificate file '/dev/zero': not a regular file"):
        XdsService().prepare(devices)
