"""deploy/compose/compose.yaml, checked offline: Redis with AOF on a volume, two gateways
and two workers of one image on the same backends, sharing one store volume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

COMPOSE_DIR = Path(__file__).parents[2] / "deploy" / "compose"
GATEWAYS = ("gateway-1", "gateway-2")
WORKERS = ("worker-1", "worker-2")
BACKENDS = ("BATCHGATE_QUEUE", "BATCHGATE_STATE", "BATCHGATE_STORE")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((COMPOSE_DIR / "compose.yaml").read_text())
    return loaded


def option(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> source (named volume or host path) of a service's volumes."""
    pairs = (v.split(":")[:2] for v in service.get("volumes", []))
    return {target: source for source, target in pairs}


def test_the_trial_runs_redis_two_gateways_and_two_workers(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {"redis", *GATEWAYS, *WORKERS}


def test_redis_keeps_an_append_only_file_on_a_volume(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    command = redis["command"]
    assert command[0] == "redis-server"
    assert option(command, "--appendonly") == "yes"
    data_dir = option(command, "--dir")
    assert mounts(redis)[data_dir] in compose["volumes"]
    assert "ports" not in redis  # only the project's network reaches it


def test_every_batchgate_service_shares_backends_image_and_store(compose: dict[str, Any]) -> None:
    services = [compose["services"][name] for name in (*GATEWAYS, *WORKERS)]
    assert len({s["image"] for s in services}) == 1
    [build] = [s["build"] for s in services if "build" in s]  # built once, run four times
    assert (COMPOSE_DIR / build["context"] / build["dockerfile"]).is_file()
    for backend in BACKENDS:
        assert len({s["environment"][backend] for s in services}) == 1, backend
    store = services[0]["environment"]["BATCHGATE_STORE"].removeprefix("file://")
    for service in services:
        assert service["environment"]["BATCHGATE_QUEUE"].startswith("redis://redis:")
        volume = [src for target, src in mounts(service).items() if store.startswith(target)]
        assert volume and volume[0] in compose["volumes"]
        assert "redis" in service["depends_on"]


def test_gateways_bind_all_interfaces_with_keys_and_publish_distinct_ports(
    compose: dict[str, Any],
) -> None:
    published = []
    for name in GATEWAYS:
        gateway = compose["services"][name]
        command = gateway["command"]
        assert command[0] == "gateway" and option(command, "--host") == "0.0.0.0"
        # Off loopback the gateway needs keys; compose refuses to start without them.
        assert gateway["environment"]["BATCHGATE_API_KEYS"].startswith("${BATCHGATE_API_KEYS:?")
        [port] = gateway["ports"]
        host, host_port, container_port = port.split(":")
        assert host == "127.0.0.1" and container_port == option(command, "--port")
        published.append(host_port)
    assert len(set(published)) == len(GATEWAYS)


def test_workers_run_an_app_from_a_mounted_folder(compose: dict[str, Any]) -> None:
    for name in WORKERS:
        worker = compose["services"][name]
        command = worker["command"]
        assert command[0] == "worker"
        app = Path(command[1])
        source = mounts(worker)[str(app.parent)]
        assert (COMPOSE_DIR / source / app.name).is_file()
        assert f"{source}:{app.parent}:ro" in worker["volumes"]
