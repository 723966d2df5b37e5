"""The admin Status message, built from plain state."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from prometheus_client import CollectorRegistry

from meshgate.admin import status_message
from meshgate.health import Health
from meshgate.policy.store import PolicyStore

EXAMPLE = Path(__file__).parents[2] / "examples" / "policy.yaml"


def test_status_reflects_policy_and_health(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    shutil.copy(EXAMPLE, path)
    registry = CollectorRegistry()
    store = PolicyStore(path, registry=registry)
    health = Health(registry=registry)
    assert status_message(store, health).models == []
    store.reload()

    async def go() -> None:
        await health.set("policy", True)
        await health.set("store", False)

    asyncio.run(go())
    status = status_message(store, health)
    assert status.policy_generation == 1
    assert status.serving is False
    assert {(c.name, c.up) for c in status.components} == {
        ("policy", True),
        ("store", False),
        ("sigterm", True),
    }
    resnet = status.models[0]
    assert (resnet.name, resnet.shadow_version, resnet.shadow_percent) == ("resnet", "v3", 5.0)
    assert [(v.name, v.weight) for v in resnet.versions] == [("v1", 90), ("v2", 10), ("v3", 0)]
