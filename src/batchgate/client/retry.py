"""The clients' retry policy: which failures are sent again, how often, and how long apart.

A request is sent again after a connection error before its answer was read (refused,
reset, timed out, dropped mid-answer) or a 429/502/503/504 answer, up to `attempts` tries
and `max_elapsed_s` after its first failure, waiting `backoff_s * 2^(n-1)` (capped at
`backoff_max_s`) scaled by a random factor in [0.5, 1] — or the answer's `Retry-After`
when that is longer. Job submissions carry an Idempotency-Key, so a retry of a request
the gateway had already accepted attaches to the first job instead of making a second.
"""

from __future__ import annotations

import dataclasses
import email.utils
import time
from collections.abc import Callable

import httpx

from batchgate.errors import ConfigError

# Failures after which the same request may be sent again: nothing was answered, or the
# answer was cut off. (Not: a malformed URL, an unsupported scheme, a proxy refusing.)
RETRYABLE_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})


@dataclasses.dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When the clients send a request again. `RetryPolicy(attempts=1)` turns retries off.

    - `attempts`: tries per request, the first included.
    - `backoff_s`, `backoff_max_s`: the first retry's delay, doubled each retry up to the cap,
      each scaled by a random factor in [0.5, 1] so that many clients do not retry in step.
    - `max_elapsed_s`: no retry starts later than this after the request first failed; a
      `Retry-After` that would end later is not waited for (the error is raised).
    - `statuses`: answers retried like connection errors (honouring `Retry-After`).
    """

    attempts: int = 6
    backoff_s: float = 0.5
    backoff_max_s: float = 10.0
    max_elapsed_s: float = 60.0
    statuses: frozenset[int] = RETRYABLE_STATUSES

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ConfigError("a retry policy needs attempts >= 1 (1 = no retries)")
        if min(self.backoff_s, self.backoff_max_s, self.max_elapsed_s) < 0:
            raise ConfigError("retry delays and max_elapsed_s must be >= 0")

    @property
    def enabled(self) -> bool:
        """Whether a request may be sent more than once."""
        return self.attempts > 1

    def backoff(self, retry: int, draw: float) -> float:
        """The delay before retry number `retry` (1 = the first); `draw` is uniform in [0, 1)."""
        ceiling = min(self.backoff_max_s, self.backoff_s * 2.0 ** (retry - 1))
        return ceiling * (0.5 + 0.5 * draw)


class Retries:
    """The retry budget of one request: failures so far and when the first one was."""

    def __init__(
        self, policy: RetryPolicy, clock: Callable[[], float], draw: Callable[[], float]
    ) -> None:
        self.policy = policy
        self.failures = 0
        self._clock = clock
        self._draw = draw
        self._first_failure_at: float | None = None

    def next_delay_s(self, retry_after_s: float | None = None) -> float | None:
        """Count a failure; the wait before the next try, or None when the budget is spent."""
        now = self._clock()
        if self._first_failure_at is None:
            self._first_failure_at = now
        self.failures += 1
        if self.failures >= self.policy.attempts:
            return None
        delay_s = self.policy.backoff(self.failures, self._draw())
        if retry_after_s is not None:
            delay_s = max(delay_s, retry_after_s)
        if now + delay_s - self._first_failure_at > self.policy.max_elapsed_s:
            return None
        return delay_s


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` value (delay-seconds or an HTTP date), or None."""
    text = (value or "").strip()
    if not text:
        return None
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None  # HTTP dates are GMT; one without a zone is not an HTTP date
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
