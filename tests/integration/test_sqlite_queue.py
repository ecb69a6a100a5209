"""The SQLite queue shared by several instances and real processes on one file."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from batchgate.errors import BackendError, ConfigError
from batchgate.queue import QueueDepth, open_queue
from batchgate.queue.sqlite import SqliteQueue

pytestmark = pytest.mark.anyio

GUARD_S = 20.0

PUT_SCRIPT = """
import asyncio, os, signal, sys
from batchgate.queue import open_queue

async def main():
    queue = await open_queue(sys.argv[1])
    ids = await queue.put([b"from child %d" % i for i in range(int(sys.argv[2]))])
    print(" ".join(ids), flush=True)
    if sys.argv[3] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    await queue.aclose()

asyncio.run(main())
"""

CONSUME_SCRIPT = """
import asyncio, sys
from batchgate.queue import open_queue

async def main():
    queue = await open_queue(sys.argv[1])
    print("ready", flush=True)
    sys.stdin.readline()  # "go": every consumer is running and the messages are in
    claimed = []
    while batch := await queue.receive(int(sys.argv[2]), wait_s=0.2, lease_s=60):
        for delivery in batch:
            assert await queue.ack(delivery), delivery
            claimed.append(delivery.message_id)
    print(" ".join(claimed), flush=True)
    await queue.aclose()

asyncio.run(main())
"""


def url_for(path: Path) -> str:
    return f"sqlite:///{path}"


async def run_python(script: str, *args: str) -> str:
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, *args, stdout=asyncio.subprocess.PIPE
    )
    stdout, _ = await child.communicate()
    return stdout.decode()


async def test_instances_on_one_file_never_share_a_claim(tmp_path: Path) -> None:
    url = url_for(tmp_path / "queue.db")
    producer, *consumers = [await open_queue(url) for _ in range(3)]
    ids = await producer.put([b"%d" % i for i in range(300)])
    claimed: list[str] = []

    async def consume(index: int) -> None:
        queue = consumers[index % len(consumers)]
        while batch := await queue.receive(7, wait_s=0, lease_s=30):
            claimed.extend(d.message_id for d in batch)
            await asyncio.sleep(0)

    async with asyncio.TaskGroup() as tasks:
        for index in range(20):
            tasks.create_task(consume(index))

    assert sorted(claimed) == sorted(ids)
    for queue in (producer, *consumers):
        await queue.aclose()


async def test_processes_on_one_file_never_share_a_claim(tmp_path: Path) -> None:
    url = url_for(tmp_path / "queue.db")
    children = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CONSUME_SCRIPT,
            url,
            "3",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        for _ in range(4)
    ]
    for child in children:
        assert child.stdout is not None
        assert await child.stdout.readline() == b"ready\n"
    queue = await open_queue(url)
    ids = await queue.put([b"%d" % i for i in range(2000)])

    async with asyncio.timeout(GUARD_S * 3):
        outputs = await asyncio.gather(*(child.communicate(b"go\n") for child in children))
    claimed_by = [stdout.decode().split() for stdout, _ in outputs]
    claimed = [mid for output in claimed_by for mid in output]
    assert sorted(claimed) == sorted(ids)
    assert sum(1 for output in claimed_by if output) > 1, "one process claimed everything"
    assert await queue.depth() == QueueDepth(ready=0, in_flight=0, delayed=0, dead=0)
    await queue.aclose()


async def test_in_process_put_wakes_a_waiting_receive_without_polling(tmp_path: Path) -> None:
    queue = await open_queue(url_for(tmp_path / "queue.db"))
    waiter = asyncio.create_task(queue.receive(1, wait_s=60, lease_s=30))
    for _ in range(10):
        await asyncio.sleep(0)
    assert not waiter.done()

    await queue.put([b"wake"])

    # A poll would take 50 ms of real time; the wakeup needs only a few loop turns.
    for _ in range(20):
        if waiter.done():
            break
        await asyncio.sleep(0)
    assert waiter.done()
    assert [d.body for d in waiter.result()] == [b"wake"]
    await queue.aclose()


async def test_waiting_receive_sees_a_put_from_another_process(tmp_path: Path) -> None:
    url = url_for(tmp_path / "queue.db")
    queue = await open_queue(url)
    waiter = asyncio.create_task(queue.receive(1, wait_s=60, lease_s=30))

    [child_id] = (await run_python(PUT_SCRIPT, url, "1", "exit")).split()

    async with asyncio.timeout(GUARD_S):
        [delivery] = await waiter
    assert (delivery.message_id, delivery.body) == (child_id, b"from child 0")
    await queue.aclose()


async def test_put_survives_kill_9(tmp_path: Path) -> None:
    url = url_for(tmp_path / "queue.db")

    ids = (await run_python(PUT_SCRIPT, url, "3", "kill")).split()

    queue = await open_queue(url)
    assert len(ids) == 3
    assert [d.message_id for d in await queue.receive(10, wait_s=0, lease_s=30)] == ids
    await queue.aclose()


async def test_state_survives_close_and_reopen(tmp_path: Path) -> None:
    url = url_for(tmp_path / "nested" / "dir" / "queue.db")
    queue = await open_queue(url)
    [_, dead_id, _] = await queue.put([b"held", b"dead", b"ready"])
    await queue.put([b"later"], delay_s=60)
    held, dead = await queue.receive(2, wait_s=0, lease_s=60)
    await queue.dead_letter(dead, "boom")
    await queue.aclose()

    reopened = await open_queue(url)

    assert await reopened.depth() == QueueDepth(ready=1, in_flight=1, delayed=1, dead=1)
    assert [(d.message_id, d.reason) for d in await reopened.list_dead()] == [(dead_id, "boom")]
    assert await reopened.ack(held), "a lease outlives the connection that took it"
    assert await reopened.release_all() == 0
    await reopened.aclose()


async def test_release_all_after_restart_frees_a_dead_process_leases(tmp_path: Path) -> None:
    url = url_for(tmp_path / "queue.db")
    queue = await open_queue(url)
    await queue.put([b"job"])
    await queue.receive(1, wait_s=0, lease_s=60)
    await queue.aclose()

    restarted = await open_queue(url)

    assert await restarted.release_all() == 1
    [delivery] = await restarted.receive(1, wait_s=0, lease_s=60)
    assert delivery.attempt == 1
    await restarted.aclose()


async def test_relative_url_and_closed_queue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    queue = await open_queue("sqlite:///data/queue.db")

    assert isinstance(queue, SqliteQueue)
    assert (tmp_path / "data" / "queue.db").exists()
    await queue.aclose()
    with pytest.raises(BackendError, match="closed"):
        await queue.put([b"x"])


async def test_url_with_a_host_is_refused() -> None:
    with pytest.raises(ConfigError):
        await open_queue("sqlite://host/queue.db")
