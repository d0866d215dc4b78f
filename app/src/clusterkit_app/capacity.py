"""The capacity model: at most N requests in service at a time, each holding its slot for the
configured service time; the others wait in line (first come, first served)."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

from . import metrics

T = TypeVar("T")


class CapacityGate:
    def __init__(self, concurrency: int, service_time_ms: int, work_mode: str = "sleep") -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        self.concurrency = concurrency
        self.service_time_s = service_time_ms / 1000.0
        self.work_mode = work_mode
        self.in_service = 0
        self.max_in_service = 0
        self.served = 0
        self._line: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def waiting(self) -> int:
        return len(self._line)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self.in_service >= self.concurrency or self._line:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._line.append(fut)
            metrics.REQUESTS_WAITING.inc()
            try:
                await fut  # the releasing request hands its slot over (in_service unchanged)
            except BaseException:
                if fut in self._line:
                    self._line.remove(fut)
                elif fut.done() and not fut.cancelled():
                    self._release()  # we were handed a slot we will not use
                raise
            finally:
                metrics.REQUESTS_WAITING.dec()
        else:
            self.in_service += 1
        self.max_in_service = max(self.max_in_service, self.in_service)
        metrics.REQUESTS_IN_SERVICE.set(self.in_service)
        try:
            yield
        finally:
            self.served += 1
            self._release()

    def _release(self) -> None:
        while self._line:
            fut = self._line.popleft()
            if not fut.done():
                fut.set_result(None)  # hand over the slot
                return
        self.in_service -= 1
        metrics.REQUESTS_IN_SERVICE.set(self.in_service)

    async def hold(self, started: float) -> None:
        """Keep the slot until the service time has elapsed since ``started`` (monotonic)."""
        remaining = self.service_time_s - (time.monotonic() - started)
        if remaining <= 0:
            return
        if self.work_mode == "cpu":
            deadline = time.monotonic() + remaining
            x = 0
            while time.monotonic() < deadline:
                for i in range(2000):
                    x = (x * 31 + i) & 0xFFFFFFFF
        else:
            await asyncio.sleep(remaining)

    async def serve(self, work: Callable[[], Awaitable[T]]) -> T:
        """Run ``work`` inside a slot; the slot is held for at least the service time."""
        async with self.slot():
            started = time.monotonic()
            with metrics.SERVICE_SECONDS.time():
                result = await work()
                await self.hold(started)
            return result
