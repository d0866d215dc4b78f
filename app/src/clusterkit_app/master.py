"""The master: holds the NODE_ID lock, serves the gRPC job stream, dispatches queued jobs."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import metrics
from .dispatch import Dispatcher
from .lease import LeaseKeeper
from .pb import jobs_pb2 as pb
from .pb import jobs_pb2_grpc as pb_grpc
from .store import ClaimedJob, JobQueue, now_ms

log = logging.getLogger(__name__)

TOKEN_HEADER = "x-clusterkit-token"
PING_INTERVAL_S = 5.0
# An empty queue is polled every POLL_INTERVAL_S at first, then less and less often up to
# POLL_INTERVAL_MAX_S while it stays empty (an idle master costs Redis and the host almost
# nothing); the first job found brings the interval back to POLL_INTERVAL_S.
POLL_INTERVAL_S = 0.02
POLL_INTERVAL_MAX_S = 0.2
CLAIM_BATCH = 64


@dataclass
class Subscriber:
    worker_id: str
    outbox: asyncio.Queue[pb.Event | None] = field(default_factory=asyncio.Queue)


class Master(pb_grpc.JobDispatchServicer):  # type: ignore[misc]
    def __init__(
        self,
        node_id: str,
        jobs: JobQueue,
        token: str,
        max_in_flight: int,
        ack_timeout_s: float,
        lock: LeaseKeeper | None = None,
    ) -> None:
        self.node_id = node_id
        self.jobs = jobs
        self.token = token
        self.ack_timeout_s = ack_timeout_s
        self.lock = lock
        self.master_id = f"{socket.gethostname()}:{os.getpid()}"
        self.dispatcher = Dispatcher(max_in_flight)
        self.subscribers: dict[str, Subscriber] = {}
        self.capacity = asyncio.Event()
        self.stopping = False
        self.redis_ok = True
        self._tasks: set[asyncio.Task[None]] = set()

    # -- gRPC ------------------------------------------------------------------------------
    async def _authorize(self, context: grpc.aio.ServicerContext[object, object]) -> None:
        presented = dict(context.invocation_metadata() or ()).get(TOKEN_HEADER, "")
        if isinstance(presented, bytes):
            presented = presented.decode(errors="replace")
        if not hmac.compare_digest(presented.encode(), self.token.encode()):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong GRPC_TOKEN")

    async def Subscribe(
        self, request: pb.SubscribeRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> AsyncIterator[pb.Event]:
        await self._authorize(context)
        if request.node_id and request.node_id != self.node_id:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"this master serves NODE_ID={self.node_id}, not {request.node_id}",
            )
        if self.stopping or not self._dispatch_allowed():
            await context.abort(grpc.StatusCode.UNAVAILABLE, "master is not dispatching")
        worker_id = request.worker_id
        previous = self.subscribers.pop(worker_id, None)
        if previous is not None:
            previous.outbox.put_nowait(None)
        sub = Subscriber(worker_id)
        self.subscribers[worker_id] = sub
        self._requeue_later(self.dispatcher.add_worker(worker_id), "worker_replaced")
        metrics.MASTER_WORKERS.set(len(self.dispatcher.workers))
        self.capacity.set()
        log.info("worker %s subscribed (%s)", worker_id, request.address or context.peer())
        try:
            yield pb.Event(welcome=pb.Welcome(master_id=self.master_id, node_id=self.node_id))
            while True:
                try:
                    event = await asyncio.wait_for(sub.outbox.get(), PING_INTERVAL_S)
                except TimeoutError:
                    event = pb.Event(ping=pb.Ping(unix_ms=now_ms()))
                if event is None:
                    return
                yield event
        finally:
            if self.subscribers.get(worker_id) is sub:
                del self.subscribers[worker_id]
                orphans = self.dispatcher.remove_worker(worker_id)
                metrics.MASTER_WORKERS.set(len(self.dispatcher.workers))
                metrics.MASTER_IN_FLIGHT.set(self.dispatcher.in_flight())
                log.info("worker %s left; %d job(s) to re-dispatch", worker_id, len(orphans))
                self._requeue_later(orphans, "worker_left")

    async def Ack(
        self, request: pb.AckRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.AckReply:
        await self._authorize(context)
        self.dispatcher.complete(request.job_id)
        metrics.MASTER_IN_FLIGHT.set(self.dispatcher.in_flight())
        self.capacity.set()
        if request.ok:
            metrics.MASTER_ACKED.labels("duplicate" if request.duplicate else "applied").inc()
            await self.jobs.ack(request.job_id, "" if request.duplicate else request.worker_id)
        else:
            metrics.MASTER_ACKED.labels("failed").inc()
            log.warning("job %s failed on %s: %s", request.job_id, request.worker_id, request.error)
            if await self.jobs.requeue(request.job_id):
                metrics.MASTER_REQUEUED.labels("failed").inc()
        return pb.AckReply(accepted=True)

    async def Drain(
        self, request: pb.DrainRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.DrainReply:
        await self._authorize(context)
        in_flight = self.dispatcher.set_draining(request.worker_id)
        log.info("worker %s drains (%d job(s) in flight)", request.worker_id, in_flight)
        return pb.DrainReply(in_flight=in_flight)

    # -- dispatch --------------------------------------------------------------------------
    def _dispatch_allowed(self) -> bool:
        return not self.stopping and (self.lock is None or self.lock.valid())

    def _requeue_later(self, job_ids: list[str], reason: str) -> None:
        if not job_ids:
            return
        task = asyncio.create_task(self._requeue(job_ids, reason))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _requeue(self, job_ids: list[str], reason: str) -> None:
        for job_id in job_ids:
            for attempt in range(5):
                try:
                    if await self.jobs.requeue(job_id):
                        metrics.MASTER_REQUEUED.labels(reason).inc()
                    break
                except RedisError as exc:  # stays in flight; the ack timeout will catch it
                    log.warning("re-queue of %s failed (%s), retry %d", job_id, exc, attempt)
                    await asyncio.sleep(0.5)
        self.capacity.set()

    def _send(self, job: ClaimedJob) -> bool:
        slot = self.dispatcher.pick()
        if slot is None:
            return False
        self.dispatcher.assign(slot.worker_id, job.id)
        event = pb.Event(job=pb.Job(id=job.id, payload_json=job.payload_json, attempt=job.attempt))
        self.subscribers[slot.worker_id].outbox.put_nowait(event)
        metrics.MASTER_DISPATCHED.inc()
        return True

    async def dispatch_loop(self) -> None:
        poll_interval = POLL_INTERVAL_S
        while not self.stopping:
            if not self._dispatch_allowed():
                # The lease is not confirmed right now (a keepalive came late, e.g. on a busy
                # host): dispatch nothing until a keepalive confirms it again. If the lease is
                # really gone, the lock-lost path stops the process (exit 4).
                await asyncio.sleep(0.1)
                continue
            free = self.dispatcher.free_slots()
            if free == 0:
                self.capacity.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.capacity.wait(), 1.0)
                continue
            try:
                claimed = await self.jobs.claim(min(free, CLAIM_BATCH), self.ack_timeout_s)
                self.redis_ok = True
            except (RedisError, OSError) as exc:
                self.redis_ok = False
                log.warning("claiming jobs failed: %s", exc)
                await asyncio.sleep(1.0)
                continue
            if not claimed:
                await asyncio.sleep(poll_interval)
                poll_interval = min(poll_interval * 2, POLL_INTERVAL_MAX_S)
                continue
            poll_interval = POLL_INTERVAL_S
            for job in claimed:
                # the lease may have expired while we waited for Redis: dispatch nothing then
                if not self._dispatch_allowed() or not self._send(job):
                    await self.jobs.requeue(job.id)
            metrics.MASTER_IN_FLIGHT.set(self.dispatcher.in_flight())
        log.info("dispatching stopped")

    async def sweep_loop(self) -> None:
        """Re-dispatch jobs whose ack deadline passed; refresh the queue gauges."""
        while not self.stopping:
            await asyncio.sleep(1.0)
            try:
                for job_id in await self.jobs.overdue():
                    self.dispatcher.complete(job_id)
                    if await self.jobs.requeue(job_id, only_if_due=True):
                        metrics.MASTER_REQUEUED.labels("ack_timeout").inc()
                        log.warning("job %s not acked in time; re-queued", job_id)
                queued, _ = await self.jobs.depth()
                metrics.MASTER_QUEUE_DEPTH.set(queued)
                self.redis_ok = True
            except (RedisError, OSError) as exc:
                self.redis_ok = False
                log.warning("sweep failed: %s", exc)
            self.capacity.set()

    async def close_streams(self) -> None:
        self.stopping = True
        self.capacity.set()
        for sub in list(self.subscribers.values()):
            sub.outbox.put_nowait(None)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5.0)

    # -- health ----------------------------------------------------------------------------
    def health_app(self) -> Starlette:
        async def healthz(request: Request) -> Response:
            body = {
                "role": "master",
                "node_id": self.node_id,
                "master_id": self.master_id,
                "workers": sorted(self.dispatcher.workers),
                "jobs_in_flight": self.dispatcher.in_flight(),
            }
            reasons = []
            if self.stopping:
                reasons.append("stopping")
            elif self.lock is not None and not self.lock.valid():
                reasons.append("etcd lock lease lost")
            if not self.redis_ok:
                reasons.append("redis unreachable")
            if reasons:
                return JSONResponse({**body, "status": "unavailable", "reasons": reasons}, 503)
            return JSONResponse({**body, "status": "ok"})

        async def metrics_endpoint(request: Request) -> Response:
            return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

        return Starlette(
            routes=[
                Route("/healthz", healthz, methods=["GET"]),
                Route("/metrics", metrics_endpoint, methods=["GET"]),
            ]
        )


def grpc_server(master: Master, bind: str, port: int) -> grpc.aio.Server:
    server = grpc.aio.server(
        options=[
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.keepalive_timeout_ms", 5_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
            ("grpc.so_reuseport", 0),
        ]
    )
    pb_grpc.add_JobDispatchServicer_to_server(master, server)
    address = f"[{bind}]:{port}" if ":" in bind else f"{bind}:{port}"
    if server.add_insecure_port(address) == 0:
        raise OSError(f"cannot bind gRPC port {address}")
    return server
