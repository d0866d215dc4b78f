"""Durable job queue in Redis, sessions in Redis, documents in MongoDB.

Redis keys (one Redis database per NODE_ID):
  job:<id>        hash: payload, status (queued|dispatched|applied), attempts, submitted_at,
                  applied_by, applied_at
  jobs:queue      list of queued job ids (LPUSH on submit, RPOP on claim, RPUSH on re-queue)
  jobs:inflight   zset of dispatched job ids, score = ack deadline (unix ms)
  session:<id>    hash: requests counter (HINCRBY), expires after SESSION_TTL_S
Every transition is one Lua script, so a crash at any point leaves each job either queued or
in flight, never lost.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError
from pymongo.write_concern import WriteConcern
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

if TYPE_CHECKING:
    from .config import Config

QUEUE = "jobs:queue"
INFLIGHT = "jobs:inflight"
SESSION_TTL_S = 1800
APPLIED_RETENTION_S = 7 * 86400


def job_key(job_id: str) -> str:
    return f"job:{job_id}"


def now_ms() -> int:
    return int(time.time() * 1000)


def utcnow() -> datetime:
    return datetime.now(UTC)


# A resend of a known job still writes (the submit counter): WAIT then covers the first
# write as well, which a resend after a lost reply may find unreplicated.
_SUBMIT = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HINCRBY', KEYS[1], 'resubmits', 1)
  return 0
end
redis.call('HSET', KEYS[1], 'payload', ARGV[1], 'status', 'queued', 'attempts', 0,
           'submitted_at', ARGV[2])
redis.call('LPUSH', KEYS[2], ARGV[3])
return 1
"""

_CLAIM = """
local out = {}
for i = 1, tonumber(ARGV[1]) do
  local id = redis.call('RPOP', KEYS[1])
  if not id then break end
  local key = ARGV[3] .. id
  local payload = redis.call('HGET', key, 'payload')
  if payload then
    redis.call('ZADD', KEYS[2], ARGV[2], id)
    local attempts = redis.call('HINCRBY', key, 'attempts', 1)
    redis.call('HSET', key, 'status', 'dispatched')
    table.insert(out, id)
    table.insert(out, payload)
    table.insert(out, attempts)
  end
end
return out
"""

_ACK = """
redis.call('ZREM', KEYS[1], ARGV[1])
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
redis.call('HSET', KEYS[2], 'status', 'applied')
if ARGV[2] ~= '' then
  redis.call('HSETNX', KEYS[2], 'applied_by', ARGV[2])
  redis.call('HSETNX', KEYS[2], 'applied_at', ARGV[3])
end
redis.call('EXPIRE', KEYS[2], ARGV[4])
return 1
"""

_REQUEUE = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score then return 0 end
if ARGV[2] ~= '' and tonumber(score) > tonumber(ARGV[2]) then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[3], 'status', 'queued')
return 1
"""

_RECOVER = """
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
for _, id in ipairs(ids) do
  redis.call('RPUSH', KEYS[2], id)
  redis.call('HSET', ARGV[1] .. id, 'status', 'queued')
end
redis.call('DEL', KEYS[1])
return #ids
"""


@dataclass(frozen=True)
class ClaimedJob:
    id: str
    payload_json: str
    attempt: int


# A command whose connection broke (Redis restarted, or closed an idle connection) is sent again
# on a new connection, after 50 ms, 100 ms, ... at most 1 s: about 3 s in all, which covers a
# Redis restart. Without it every pooled connection of the old Redis failed one request, some
# of them long after the restart. Timeouts are not retried (the command may have run).
# With Sentinel a new connection asks the Sentinels for the primary first, and a demoted
# primary's READONLY reply counts as a broken connection (redis-py's SentinelManagedConnection),
# so the same retries follow a failover; one that takes longer fails the request (503).
REDIS_RETRIES = 6


class NotReplicatedError(RedisError):
    """Fewer replicas than required acknowledged a write in time (answered as 503)."""


def _retry() -> Retry:
    return Retry(
        ExponentialWithJitterBackoff(base=0.05, cap=1.0),
        REDIS_RETRIES,
        supported_errors=(RedisConnectionError,),
    )


# Shared by both kinds of pool: under a burst, callers wait for a connection instead of failing.
_POOL_OPTIONS: dict[str, Any] = {
    "decode_responses": True,
    "socket_timeout": 5,
    "socket_connect_timeout": 3,
    "health_check_interval": 15,
    "max_connections": 64,
    "timeout": 5,
}


class BlockingSentinelConnectionPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """Sentinel's pool (connections follow the primary) that waits for a free connection."""


def make_redis(
    host: str,
    port: int,
    password: str | None,
    db: int,
    sentinels: tuple[tuple[str, int], ...] = (),
    sentinel_master: str = "clusterkit",
    sentinel_password: str | None = None,
) -> aioredis.Redis:
    """A client of the single Redis at host:port, or of the primary the Sentinels name."""
    if not sentinels:
        pool = aioredis.BlockingConnectionPool(
            retry=_retry(), host=host, port=port, password=password, db=db, **_POOL_OPTIONS
        )
        return aioredis.Redis.from_pool(pool)
    manager = Sentinel(
        list(sentinels),
        sentinel_kwargs={
            "password": sentinel_password,
            "socket_timeout": 1,
            "socket_connect_timeout": 1,
        },
    )
    return manager.master_for(
        sentinel_master,
        connection_pool_class=BlockingSentinelConnectionPool,
        retry=_retry(),
        password=password,
        db=db,
        **_POOL_OPTIONS,
    )


def redis_for(config: Config) -> aioredis.Redis:
    """The Redis client the app's configuration names (single Redis, or Sentinels)."""
    return make_redis(
        config.redis_host,
        config.redis_port,
        config.redis_password,
        config.redis_db,
        sentinels=config.redis_sentinels,
        sentinel_master=config.redis_sentinel_master,
        sentinel_password=config.redis_sentinel_password,
    )


class JobQueue:
    def __init__(
        self, redis: aioredis.Redis, wait_replicas: int = 0, wait_timeout_ms: int = 1000
    ) -> None:
        self.redis = redis
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self._submit = redis.register_script(_SUBMIT)
        self._claim = redis.register_script(_CLAIM)
        self._ack = redis.register_script(_ACK)
        self._requeue = redis.register_script(_REQUEUE)
        self._recover = redis.register_script(_RECOVER)

    async def submit(self, job_id: str, payload_json: str) -> bool:
        """Store and enqueue a job atomically. False if the id already exists (idempotent).

        With wait_replicas > 0, returns only once that many replicas have the job (WAIT on the
        same connection as the write), else raises NotReplicatedError: the caller must not
        acknowledge the job, and a resend is safe. A failover then loses no returned job:
        Sentinel promotes the replica with the most data, which has it.
        """
        keys = [job_key(job_id), QUEUE]
        args = [payload_json, utcnow().isoformat(), job_id]
        if self.wait_replicas <= 0:
            return bool(await self._submit(keys=keys, args=args))
        async with self.redis.pipeline(transaction=False) as pipe:
            await self._submit(keys=keys, args=args, client=pipe)
            pipe.execute_command("WAIT", self.wait_replicas, self.wait_timeout_ms)
            created, acked = await pipe.execute()
        if int(acked) < self.wait_replicas:
            raise NotReplicatedError(
                f"job {job_id}: {acked} of {self.wait_replicas} replicas acknowledged it "
                f"within {self.wait_timeout_ms} ms"
            )
        return bool(created)

    async def claim(self, n: int, ack_timeout_s: float) -> list[ClaimedJob]:
        deadline = now_ms() + int(ack_timeout_s * 1000)
        flat: list[Any] = await self._claim(keys=[QUEUE, INFLIGHT], args=[n, deadline, "job:"])
        return [
            ClaimedJob(str(flat[i]), str(flat[i + 1]), int(flat[i + 2]))
            for i in range(0, len(flat), 3)
        ]

    async def ack(self, job_id: str, worker_id: str) -> bool:
        return bool(
            await self._ack(
                keys=[INFLIGHT, job_key(job_id)],
                args=[job_id, worker_id, utcnow().isoformat(), APPLIED_RETENTION_S],
            )
        )

    async def requeue(self, job_id: str, only_if_due: bool = False) -> bool:
        max_score = str(now_ms()) if only_if_due else ""
        return bool(
            await self._requeue(keys=[INFLIGHT, QUEUE, job_key(job_id)], args=[job_id, max_score])
        )

    async def overdue(self, limit: int = 1000) -> list[str]:
        ids = await self.redis.zrangebyscore(INFLIGHT, "-inf", now_ms(), start=0, num=limit)
        return [str(i) for i in ids]

    async def recover(self) -> int:
        """Re-queue every in-flight job (called by a master that just took the lock)."""
        return int(await self._recover(keys=[INFLIGHT, QUEUE], args=["job:"]))

    async def depth(self) -> tuple[int, int]:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.llen(QUEUE)
            pipe.zcard(INFLIGHT)
            queued, inflight = await pipe.execute()
        return int(queued), int(inflight)

    async def get(self, job_id: str) -> dict[str, str]:
        result = await self.redis.hgetall(job_key(job_id))
        return {str(k): str(v) for k, v in result.items()}

    async def touch_session(self, session: str) -> int:
        key = f"session:{session}"
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hincrby(key, "requests", 1)
            pipe.expire(key, SESSION_TTL_S)
            count, _ = await pipe.execute()
        return int(count)


class Documents:
    """MongoDB side: ``requests`` (write concern as configured) and ``applied_jobs``
    (majority write concern)."""

    def __init__(
        self, uri: str, database: str, appname: str, request_write_concern: str = "majority"
    ) -> None:
        self.client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            uri,
            appname=appname,
            serverSelectionTimeoutMS=5000,
            connectTimeoutMS=3000,
            w="majority",
            tz_aware=True,
        )
        self.db: AsyncDatabase[dict[str, Any]] = self.client.get_database(
            database, write_concern=WriteConcern(w="majority")
        )
        # Request audit documents may trade failover durability for less replication work on
        # the request path (w=1, still journaled); applied jobs always stay majority.
        self.requests = self.db.get_collection(
            "requests",
            write_concern=WriteConcern(w=1 if request_write_concern == "1" else "majority", j=True),
        )

    async def close(self) -> None:
        await self.client.close()

    async def ping(self) -> None:
        await self.db.command("ping")

    async def insert_request(self, doc: dict[str, Any]) -> None:
        await self.requests.insert_one(doc)

    async def get_request(self, request_id: str) -> dict[str, Any] | None:
        return await self.requests.find_one({"_id": request_id})

    async def apply_job(self, job_id: str, worker_id: str, attempt: int, payload_json: str) -> bool:
        """The idempotent apply: True if applied now, False if it had been applied before."""
        try:
            await self.db.applied_jobs.insert_one(
                {
                    "_id": job_id,
                    "worker_id": worker_id,
                    "applied_at": utcnow(),
                    "attempt": attempt,
                    "payload": payload_json,
                }
            )
        except DuplicateKeyError:
            return False
        return True

    async def get_applied(self, job_id: str) -> dict[str, Any] | None:
        return await self.db.applied_jobs.find_one({"_id": job_id})
