"""The Dockerfile's image, run for real with podman: redis, a gateway and a worker as three
containers answer a blocking POST; a derived image with the app copied in serves alone."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import TEST_APP
from tests.fixtures.podman import Podman
from tests.fixtures.ports import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

STARTUP_S = 90.0
APP_DIR = Path(TEST_APP).parent
NON_ROOT = "10001:10001"


def wait_for_functions(podman: Podman, url: str, containers: list[str]) -> None:
    """Until the gateway serves `echo` (it learns it from the worker's manifest)."""
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        try:
            listed = httpx.get(url + "/v1/functions", timeout=2).json()["functions"]
            if "echo" in {f["name"] for f in listed}:
                return
        except (httpx.TransportError, KeyError, ValueError):
            pass
        time.sleep(0.2)  # a port that is not open yet and a manifest re-read: nothing to await
    logs = "\n".join(f"--- {name}\n{podman.logs(name)}" for name in containers)
    raise AssertionError(f"{url} never served the worker's functions:\n{logs}")


def test_image_runs_batchgate_as_a_non_root_user_without_compilers(
    podman: Podman, batchgate_image: str
) -> None:
    config = podman.run(
        "image", "inspect", "--format", "{{.Config.User}} {{.Config.Entrypoint}}", batchgate_image
    ).stdout.split(maxsplit=1)
    assert config == [NON_ROOT, "[batchgate]\n"]
    probe = "for c in gcc cc g++ c++ clang make; do command -v $c && exit 1; done; id -u"
    shell = podman.run("run", "--rm", "--entrypoint", "/bin/sh", batchgate_image, "-c", probe)
    assert shell.stdout.strip() == "10001"
    help_text = podman.run("run", "--rm", batchgate_image, "worker", "--help").stdout
    assert "--concurrency" in help_text
    size_mb = podman.image_size_bytes(batchgate_image) / 1e6
    print(f"\nbatchgate image: {size_mb:.0f} MB")  # shown with -s; the docs quote it


def test_redis_gateway_and_worker_containers_answer_a_blocking_post(
    podman: Podman, batchgate_image: str, redis_image: str, tmp_path: Path
) -> None:
    redis_port, gateway_port = free_port(), free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0?prefix=image-test:"
    store = tmp_path / "store"
    store.mkdir()
    store.chmod(0o777)  # written by the image's non-root user
    redis = podman.start(
        "redis", redis_image,
        "redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
        "--save", "", "--appendonly", "yes", "--dir", "/tmp",
    )  # fmt: skip
    env = [
        f"--env=BATCHGATE_QUEUE={redis_url}",
        f"--env=BATCHGATE_STATE={redis_url}",
        "--env=BATCHGATE_STORE=file:///shared/store",
        "--env=BATCHGATE_DRAIN=5",
        f"--volume={store}:/shared/store",
    ]
    worker = podman.start(
        "worker", batchgate_image, "worker", "/app/testapp.py", "--concurrency", "1",
        options=[*env, f"--volume={APP_DIR}:/app:ro"],
    )  # fmt: skip
    gateway = podman.start(
        "gateway", batchgate_image, "gateway", "--port", str(gateway_port), options=env
    )
    url = f"http://127.0.0.1:{gateway_port}"
    wait_for_functions(podman, url, [redis, worker, gateway])

    with httpx.Client(base_url=url, timeout=60) as http:
        plain = http.post("/v1/functions/echo", json={"hello": "containers"})
        # A map job: its chunks and results go through the store the two containers share.
        batch = http.post("/v1/functions/square", json=[1, 2, 3])
    assert plain.status_code == 200, plain.text
    assert plain.json() == {"hello": "containers"}
    assert batch.status_code == 200, batch.text
    assert batch.json() == [1, 4, 9]

    # SIGTERM reaches batchgate as PID 1 (the exec-form entrypoint) and it exits cleanly.
    assert podman.stop(gateway) == 0, podman.logs(gateway)
    assert podman.stop(worker) == 0, podman.logs(worker)


def test_derived_image_with_the_app_copied_in_serves_it(
    podman: Podman, batchgate_image: str, tmp_path: Path
) -> None:
    context = tmp_path / "derived"
    context.mkdir()
    shutil.copy(TEST_APP, context / "testapp.py")
    (context / "Containerfile").write_text(
        'ARG IMAGE\nFROM ${IMAGE}\nCOPY testapp.py /app/\nCMD ["serve", "/app/testapp.py"]\n'
    )
    derived = podman.build(
        f"localhost/{podman.name('derived')}:latest", context, {"IMAGE": batchgate_image}
    )
    port = free_port()
    # The embedded backends write under the image's data directory, owned by its user.
    server = podman.start(
        "serve", derived, "serve", "/app/testapp.py", "--port", str(port), "--workers", "1"
    )
    url = f"http://127.0.0.1:{port}"
    wait_for_functions(podman, url, [server])
    response = httpx.post(url + "/v1/functions/add", json={"a": 2, "b": 3}, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json() == 5
    assert podman.stop(server) == 0, podman.logs(server)
