"""The bridge's one retry policy: exponential back-off on transient store errors.

Only :class:`~bridge.errors.StoreUnavailable` is retried, and for as long as it takes:
the messages of the batch stay unacknowledged meanwhile, so the broker keeps them and,
once ``receive_maximum`` messages are in flight, stops sending more. Anything else
propagates and stops the service.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from bridge.errors import StoreUnavailable

__all__ = ["RetryPolicy", "retry"]

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    transient: tuple[type[BaseException], ...] = (StoreUnavailable,)
    first_wait: float = 0.2
    max_wait: float = 5.0
    multiplier: float = 2.0

    def wait(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        return float(min(self.max_wait, self.first_wait * self.multiplier ** (attempt - 1)))


async def retry(
    call: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    on_retry: Callable[[int, BaseException, float], None],
    on_success: Callable[[], None],
) -> T:
    """Run ``call`` until it succeeds or raises a non-transient error."""
    attempt = 0
    while True:
        try:
            result = await call()
        except policy.transient as exc:
            attempt += 1
            delay = policy.wait(attempt)
            on_retry(attempt, exc, delay)
            await asyncio.sleep(delay)
            continue
        on_success()
        return result
