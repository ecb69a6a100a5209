"""`controller_handler`: sets the number of feeder chains, run on a schedule (every minute).

Each run reads the queue's depth (ready plus in-flight messages: the demand) and the live
chains (chains.py), computes a target with `target_chains`, and starts or retires chains
to meet it: up at once, down by one chain a run, so a short lull does not tear down chains
a backlog will want again. A chain whose token expired (a hop that crashed) no longer
counts as live, so the same run starts its replacement. With the kill switch off the
target is 0 and every chain is retired at once.

Environment (the template sets it): FEEDER_FUNCTION_NAME, FEEDER_MAX_CHAINS,
FEEDER_MIN_CHAINS (default 1), FEEDER_TASKS_PER_CHAIN (tasks one chain works on at once,
default 10), plus the BATCHGATE_* backends.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Mapping
from typing import Any

from batchgate.aws import chains as chain_store
from batchgate.aws import runtime, template
from batchgate.aws.feeder import hop_event, invoke_async, lambda_client
from batchgate.errors import BackendError, ConfigError

log = logging.getLogger("batchgate.aws.controller")

FUNCTION_ENV = template.FEEDER_FUNCTION_ENV
MAX_CHAINS_ENV = template.FEEDER_MAX_CHAINS_ENV
MIN_CHAINS_ENV = template.FEEDER_MIN_CHAINS_ENV
TASKS_PER_CHAIN_ENV = template.FEEDER_TASKS_PER_CHAIN_ENV


@dataclasses.dataclass(frozen=True, slots=True)
class ControllerConfig:
    function: str
    max_chains: int
    min_chains: int = 1
    tasks_per_chain: int = 10

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ControllerConfig:
        function = env.get(FUNCTION_ENV, "")
        if not function:
            raise ConfigError(f"{FUNCTION_ENV} must name the feeder function")
        numbers = {}
        for name, default in (
            (MAX_CHAINS_ENV, None),
            (MIN_CHAINS_ENV, "1"),
            (TASKS_PER_CHAIN_ENV, "10"),
        ):
            text = env.get(name, default)
            if text is None or not text.isdigit():
                raise ConfigError(f"{name} must be a whole number >= 0, got {text!r}")
            numbers[name] = int(text)
        config = cls(
            function,
            numbers[MAX_CHAINS_ENV],
            min(numbers[MIN_CHAINS_ENV], numbers[MAX_CHAINS_ENV]),
            numbers[TASKS_PER_CHAIN_ENV],
        )
        if config.tasks_per_chain < 1:
            raise ConfigError(f"{TASKS_PER_CHAIN_ENV} must be at least 1")
        return config


def target_chains(demand: int, current: int, config: ControllerConfig) -> int:
    """How many chains to run: enough for `demand` tasks within [min, max], reached at once
    going up and one chain at a time going down (but never above max: a lowered
    FEEDER_MAX_CHAINS, 0 included, applies at once)."""
    wanted = math.ceil(demand / config.tasks_per_chain)
    wanted = max(config.min_chains, min(config.max_chains, wanted))
    if wanted >= current:
        return wanted
    return min(config.max_chains, max(wanted, current - 1))


async def control(config: ControllerConfig) -> dict[str, Any]:
    """One controller run; returns what it saw and did."""
    settings = runtime.load_settings()
    chains = chain_store.Chains.open(settings.state_url)
    try:
        async with runtime.backends(settings) as (queue, _, store):
            depth = await queue.depth()
            live, dead = await chains.alive()
            demand = depth.ready + depth.in_flight
            if await chain_store.keep_feeding(store):
                target = target_chains(demand, len(live), config)
            else:
                target = 0
            retired = [c.token for c in reversed(live)][: max(0, len(live) - target)]
            await chains.retire(retired)
            started = await _start(chains, config, max(0, target - len(live)))
    finally:
        await chains.aclose()
    report = {
        "demand": demand,
        "live": len(live),
        "dead": len(dead),
        "target": target,
        "started": started,
        "retired": len(retired),
    }
    log.info("feeder chains: %s", report)
    return report


async def _start(chains: chain_store.Chains, config: ControllerConfig, count: int) -> int:
    if count == 0:
        return 0
    new = await chains.start(count)
    lam = await lambda_client()
    started = 0
    try:
        for chain in new:
            try:
                await invoke_async(lam, config.function, hop_event(chain.token, 0))
                started += 1
            except BackendError:
                log.exception("could not start chain %s…", chain.token[:6])
                await chains.retire([chain.token])
    finally:
        await lam.aclose()
    return started


async def handle(event: Any, context: runtime.LambdaContext) -> dict[str, Any]:
    return await control(ControllerConfig.from_env(os.environ))
