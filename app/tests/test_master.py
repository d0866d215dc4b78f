"""The master's gRPC service in-process (real gRPC server, real redis-server): token check,
dispatch over subscribers, re-dispatch when a stream breaks, drain, ack timeout."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
import pytest

from clusterkit_app.devservers import RedisServer, free_port
from clusterkit_app.master import TOKEN_HEADER, Master, grpc_server
from clusterkit_app.pb import jobs_pb2 as pb
from clusterkit_app.pb import jobs_pb2_grpc as pb_grpc
from clusterkit_app.store import JobQueue, make_redis

TOKEN = "secret"
MD = ((TOKEN_HEADER, TOKEN),)


class FakeWorker:
    """A subscriber that records the jobs it receives (and acks only when told to)."""

    def __init__(self, port: int, worker_id: str) -> None:
        self.worker_id = worker_id
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.stub = pb_grpc.JobDispatchStub(self.channel)
        self.received: list[str] = []
        self.welcomed = asyncio.Event()
        self.call = self.stub.Subscribe(
            pb.SubscribeRequest(worker_id=worker_id, node_id="n1"), metadata=MD
        )
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
            async for event in self.call:
                if event.HasField("welcome"):
                    self.welcomed.set()
                elif event.HasField("job"):
                    self.received.append(event.job.id)

    async def ack(self, job_id: str) -> None:
        await self.stub.Ack(
            pb.AckRequest(worker_id=self.worker_id, job_id=job_id, ok=True), metadata=MD
        )

    async def close(self) -> None:
        self.call.cancel()
        await self.task
        await self.channel.close()


async def until(predicate: object, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0.02)


@pytest.fixture
async def master(redis_server: RedisServer, redis_db: int) -> AsyncIterator[tuple[Master, int]]:
    redis = make_redis("127.0.0.1", redis_server.port, redis_server.password, redis_db)
    await redis.flushdb()
    m = Master("n1", JobQueue(redis), TOKEN, max_in_flight=2, ack_timeout_s=1.5)
    port = free_port()
    server = grpc_server(m, "127.0.0.1", port)
    await server.start()
    loops = [asyncio.create_task(m.dispatch_loop()), asyncio.create_task(m.sweep_loop())]
    yield m, port
    await m.close_streams()
    for t in loops:
        t.cancel()
    await server.stop(grace=0.5)
    await redis.aclose()


async def test_wrong_token_is_refused(master: tuple[Master, int]) -> None:
    _, port = master
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.JobDispatchStub(channel)
        call = stub.Subscribe(
            pb.SubscribeRequest(worker_id="x"), metadata=((TOKEN_HEADER, "wrong"),)
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in call:
                pass
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_dispatch_spread_and_redispatch_on_stream_break(master: tuple[Master, int]) -> None:
    m, port = master
    a, b = FakeWorker(port, "a"), FakeWorker(port, "b")
    await a.welcomed.wait()
    await b.welcomed.wait()
    for i in range(6):
        await m.jobs.submit(f"j{i}", "{}")
    # 2 workers x max 2 in flight: 4 dispatched, evenly, 2 still queued
    await until(lambda: len(a.received) + len(b.received) == 4)
    assert len(a.received) == 2 and len(b.received) == 2
    assert (await m.jobs.depth()) == (2, 4)

    lost = list(a.received)
    await a.close()  # the stream breaks: a's jobs go back to the queue, then to b
    for job_id in list(b.received):
        await b.ack(job_id)
    await until(lambda: set(lost) <= set(b.received))
    for _ in range(3):
        for job_id in list(b.received):
            await b.ack(job_id)
        await asyncio.sleep(0.1)
    await until(lambda: len(set(b.received)) == 6)
    for job_id in b.received:
        await b.ack(job_id)
    await until(lambda: m.dispatcher.in_flight() == 0)
    for job_id in lost:
        record = await m.jobs.get(job_id)
        assert record["attempts"] == "2" and record["status"] == "applied"
    await b.close()


async def test_draining_worker_gets_no_new_job(master: tuple[Master, int]) -> None:
    m, port = master
    a = FakeWorker(port, "a")
    await a.welcomed.wait()
    await a.stub.Drain(pb.DrainRequest(worker_id="a"), metadata=MD)
    b = FakeWorker(port, "b")
    await b.welcomed.wait()
    for i in range(3):
        await m.jobs.submit(f"d{i}", "{}")
    await until(lambda: len(b.received) == 2)
    await asyncio.sleep(0.2)
    assert a.received == []
    await a.close()
    await b.close()


async def test_unacked_job_is_redispatched_after_timeout(master: tuple[Master, int]) -> None:
    m, port = master
    a = FakeWorker(port, "a")
    await a.welcomed.wait()
    await m.jobs.submit("slow", "{}")
    await until(lambda: a.received == ["slow"])
    # no ack: after JOB_ACK_TIMEOUT_S (1.5 s here) the job is delivered again
    await until(lambda: a.received == ["slow", "slow"], timeout=6)
    await a.ack("slow")
    assert (await m.jobs.get("slow"))["attempts"] == "2"
    await a.close()
