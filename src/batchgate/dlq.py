"""Dead-letter queue operations behind `batchgate dlq`."""

from __future__ import annotations

from collections.abc import Sequence

from batchgate.models import Task, iso, peek_job_id
from batchgate.server import open_backends
from batchgate.settings import Settings

# Dead letters read at once when re-driving; enough for any DLQ a person re-drives by hand.
_REDRIVE_SCAN = 100_000


async def list_dead(settings: Settings, limit: int) -> list[str]:
    """One line per dead letter: message id, job id, function, attempts, time, reason."""
    async with open_backends(settings) as (queue, _state, _store):
        dead = await queue.list_dead(limit)
    lines = []
    for letter in dead:
        try:
            task = Task.decode(letter.body)
            what = f"job={task.job_id} function={task.function}"
        except (ValueError, KeyError, TypeError):
            what = f"job={peek_job_id(letter.body) or '?'} (undecodable message)"
        lines.append(
            f"{letter.message_id}  {what}  attempts={letter.attempts}  "
            f"failed_at={iso(letter.failed_at)}  reason={letter.reason}"
        )
    return lines


async def redrive(settings: Settings, message_ids: Sequence[str] | None) -> int:
    """Re-open the dead letters' jobs and put their tasks back on the queue."""
    async with open_backends(settings) as (queue, state, _store):
        wanted = None if message_ids is None else set(message_ids)
        for letter in await queue.list_dead(_REDRIVE_SCAN):
            if wanted is not None and letter.message_id not in wanted:
                continue
            try:
                task = Task.decode(letter.body)
            except (ValueError, KeyError, TypeError):
                continue
            await state.reopen(task.job_id)
        return await queue.redrive(message_ids)
