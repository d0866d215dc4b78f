"""etcd leases kept alive in the background, and the one-master-per-NODE_ID lock built on them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from datetime import UTC, datetime

from .etcd import EtcdClient, EtcdError, KeyValue

log = logging.getLogger(__name__)


class LeaseKeeper:
    """Grants a lease and refreshes it every ttl/3. ``valid()`` turns false as soon as the lease
    may have expired (no successful refresh for ttl seconds, or etcd says it is gone)."""

    def __init__(self, client: EtcdClient, ttl: int) -> None:
        self.client = client
        self.ttl = ttl
        self.lease = 0
        self._valid_until = 0.0
        self.lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def grant(self) -> int:
        started = time.monotonic()
        self.lease = await self.client.grant(self.ttl)
        self._valid_until = started + self.ttl
        self.lost.clear()
        return self.lease

    def valid(self) -> bool:
        return not self.lost.is_set() and time.monotonic() < self._valid_until

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"lease-{self.lease}")

    async def _run(self) -> None:
        interval = max(self.ttl / 3.0, 0.5)
        while True:
            await asyncio.sleep(interval)
            sent = time.monotonic()
            try:
                remaining = await asyncio.wait_for(self.client.keepalive(self.lease), interval)
            except (EtcdError, TimeoutError) as exc:
                log.warning("etcd lease %x keepalive failed: %s", self.lease, exc)
                if time.monotonic() >= self._valid_until:
                    log.error("etcd lease %x expired (no keepalive for %ss)", self.lease, self.ttl)
                    self.lost.set()
                    return
                continue
            if remaining <= 0:
                log.error("etcd lease %x no longer exists", self.lease)
                self.lost.set()
                return
            self._valid_until = sent + remaining

    async def stop(self, revoke: bool = True) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if revoke and self.lease:
            try:
                await self.client.revoke(self.lease)
            except EtcdError as exc:
                log.warning("could not revoke etcd lease %x: %s", self.lease, exc)
            self.lease = 0
        self.lost.set()


class LockHeld(Exception):
    def __init__(self, holder: str) -> None:
        super().__init__(holder)
        self.holder = holder


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe_holder(kv: KeyValue | None) -> str:
    if kv is None:
        return "unknown"
    try:
        info = json.loads(kv.value)
        return f"{info['host']}:{info['pid']}"
    except (ValueError, KeyError, TypeError):
        return kv.value[:80]


async def acquire_lock(
    client: EtcdClient, key: str, ttl: int, wait: bool, extra: dict[str, str] | None = None
) -> LeaseKeeper:
    """Take the lease-backed lock ``key`` (created only if absent).

    If the holder is a dead process of this same host (the previous instance of this service,
    killed with SIGKILL), its lease is revoked and the lock taken at once. If the holder is alive
    (or on another host): raise LockHeld, or with ``wait`` retry every second until the holder
    releases the lock or its lease expires (at most ``ttl`` seconds after it died)."""
    host = socket.gethostname()
    announced = False
    while True:
        keeper = LeaseKeeper(client, ttl)
        lease = await keeper.grant()
        value = json.dumps(
            {
                "host": host,
                "pid": os.getpid(),
                "lease": lease,
                "started": datetime.now(UTC).isoformat(),
                **(extra or {}),
            }
        )
        created, holder = await client.create(key, value, lease)
        if created:
            keeper.start()
            return keeper
        await client.revoke(lease)
        if holder is not None:
            try:
                info = json.loads(holder.value)
            except ValueError:
                info = {}
            pid = info.get("pid")
            if (
                info.get("host") == host
                and isinstance(pid, int)
                and pid != os.getpid()
                and not _pid_alive(pid)
            ):
                log.warning("lock %s is held by a dead process (%s); revoking its lease", key, pid)
                await client.revoke(holder.lease)
                continue
        if not wait:
            raise LockHeld(describe_holder(holder))
        if not announced:
            log.info("lock %s held by %s; waiting for it", key, describe_holder(holder))
            announced = True
        await asyncio.sleep(1.0)
