"""`feeder_handler`: one hop of a feeder chain.

A hop runs the Worker (SQS long polls of 20 s, the executor pool, heartbeats) until its
time runs short: it stops taking tasks once less than the longest function's time limit
plus HOP_MARGIN_S is left, finishes or releases what it holds, and then, if its chain's
token is still leased and the kill switch is on, invokes its own function again
(InvocationType=Event) with the same token and the next hop number. Every
BEAT_INTERVAL_S it renews the token; a failed renewal (the controller retired the chain)
or a removed kill switch stops the hop early, and the chain ends there.

The event: {"chain": TOKEN, "hop": N}, as the controller (hop 0) or the previous hop sends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from typing import Any

from batchgate.aws import chains as chain_store
from batchgate.aws import runtime
from batchgate.aws_client import AwsClient, open_client
from batchgate.errors import BackendError, ConfigError
from batchgate.store import Store
from batchgate.worker.runtime import Worker

log = logging.getLogger("batchgate.aws.feeder")

# Time kept after the longest function's limit: drain, release, and the next hop's invoke.
HOP_MARGIN_S = 5.0


def hop_event(token: str, hop: int) -> bytes:
    return json.dumps({"chain": token, "hop": hop}).encode()


def parse_event(event: Any) -> tuple[str, int]:
    """(token, hop) of a feeder event; ConfigError for anything else."""
    if not isinstance(event, dict) or not isinstance(event.get("chain"), str):
        raise ConfigError(
            'feeder_handler expects {"chain": TOKEN, "hop": N} from the controller; '
            "start chains with the controller, not by hand"
        )
    hop = event.get("hop", 0)
    if isinstance(hop, bool) or not isinstance(hop, int) or hop < 0:
        raise ConfigError(f"hop must be a whole number >= 0, got {hop!r}")
    return event["chain"], hop


async def invoke_async(lam: AwsClient, function: str, payload: bytes) -> None:
    """Start `function` with `payload` without waiting for it (InvocationType=Event)."""
    await lam.call("invoke", FunctionName=function, InvocationType="Event", Payload=payload)


async def lambda_client() -> AwsClient:
    """A Lambda client for the function's region (and AWS_ENDPOINT_URL_LAMBDA or
    AWS_ENDPOINT_URL, which botocore honours, off AWS)."""
    return await open_client("lambda", {})


class Hop:
    """One feeder invocation; `run` returns what it did, for the logs and the caller."""

    def __init__(self, token: str, hop: int, chains: chain_store.Chains, store: Store) -> None:
        self.token = token
        self.hop = hop
        self.chains = chains
        self.store = store
        self.stop = asyncio.Event()
        self.reason = "time"

    async def still_wanted(self) -> bool:
        """Renew the token and read the kill switch; note why the chain must end if so."""
        try:
            if not await self.chains.beat(self.token, self.hop):
                self.reason = "retired"
                return False
            if not await chain_store.keep_feeding(self.store):
                self.reason = "kill switch off"
                await self.chains.retire([self.token])  # the chain ends here, for good
                return False
        except BackendError as exc:
            log.warning("chain check failed, going on: %s", exc.message)
        return True

    async def watch(self, deadline: runtime.Deadline, stop_at_left_s: float) -> None:
        """Set `stop` when time runs short or the chain is no longer wanted."""
        while not self.stop.is_set():
            left = deadline.left_s() - stop_at_left_s
            if left <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), min(chain_store.BEAT_INTERVAL_S, left))
            if deadline.left_s() > stop_at_left_s and not await self.still_wanted():
                break
        self.stop.set()


async def handle(event: Any, context: runtime.LambdaContext) -> dict[str, Any]:
    token, hop = parse_event(event)
    loop = asyncio.get_running_loop()
    deadline = runtime.Deadline(context, loop)
    settings = runtime.load_settings()
    registry = runtime.registry()
    longest_s = max((info.timeout_s for info in registry), default=0.0)
    stop_at_left_s = longest_s + HOP_MARGIN_S
    chains = chain_store.Chains.open(settings.state_url)
    try:
        async with runtime.backends(settings) as (queue, state, store):
            current = Hop(token, hop, chains, store)
            if not await current.still_wanted():
                log.info("chain %s… ends before hop %d: %s", token[:6], hop, current.reason)
                return {"chain": token, "hop": hop, "next": False, "reason": current.reason}
            if deadline.left_s() <= stop_at_left_s:
                raise ConfigError(
                    f"the feeder's timeout leaves no time to run a task: it needs more than "
                    f"{stop_at_left_s:g} s (the longest function limit plus {HOP_MARGIN_S:g})"
                )
            pool = await runtime.executor_pool(runtime.app_ref(), settings.workers)
            # Tasks still running at the stop get the rest of the hop's margin to finish.
            worker_settings = dataclasses.replace(settings, drain_s=longest_s + HOP_MARGIN_S / 2)
            # Its long polls end by the stop: a poll still running then would hold the
            # queue's close (and so the next hop's invoke) for up to 20 s.
            worker = Worker(
                registry,
                queue,
                state,
                store,
                pool,
                worker_settings,
                deadline.left_s,
                receive_until_left_s=stop_at_left_s,
            )
            async with asyncio.TaskGroup() as group:
                group.create_task(current.watch(deadline, stop_at_left_s))
                await worker.run(current.stop)
            go_on = current.reason == "time" and await current.still_wanted()
        if go_on:
            lam = await lambda_client()
            try:
                await invoke_async(lam, context.function_name, hop_event(token, hop + 1))
            finally:
                await lam.aclose()
    finally:
        await chains.aclose()
    log.info("chain %s… hop %d done: %s", token[:6], hop, current.reason)
    return {"chain": token, "hop": hop, "next": go_on, "reason": current.reason}
