"""The worker: HTTP API, job stream client, etcd registration, graceful drain."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import time
from datetime import UTC, datetime

import grpc

from . import metrics
from .capacity import CapacityGate
from .config import Config
from .etcd import EtcdClient, EtcdError
from .lease import LeaseKeeper
from .master import TOKEN_HEADER
from .pb import jobs_pb2 as pb
from .pb import jobs_pb2_grpc as pb_grpc
from .store import Documents, JobQueue

log = logging.getLogger(__name__)

REGISTRATION_TTL_S = 10


def worker_key(prefix: str, node_id: str, worker_id: str) -> str:
    return f"{prefix}/nodes/{node_id}/workers/{worker_id}"


class Worker:
    def __init__(self, config: Config, jobs: JobQueue, docs: Documents, etcd: EtcdClient) -> None:
        self.config = config
        self.worker_id = config.worker_id
        self.jobs = jobs
        self.docs = docs
        self.etcd = etcd
        self.max_body_bytes = config.max_body_bytes
        self.gate = CapacityGate(
            config.worker_concurrency, config.service_time_ms, config.work_mode
        )
        self.job_gate = CapacityGate(
            config.max_jobs_in_flight_per_worker, config.service_time_ms, config.work_mode
        )
        self._draining = asyncio.Event()
        self._connected = False
        self._stub: pb_grpc.JobDispatchStub | None = None
        self._job_tasks: set[asyncio.Task[None]] = set()
        self._jobs_idle = asyncio.Event()
        self._jobs_idle.set()
        self._stream_call: grpc.aio.UnaryStreamCall[pb.SubscribeRequest, pb.Event] | None = None
        self.lease: LeaseKeeper | None = None
        self._metadata = ((TOKEN_HEADER, config.grpc_token),)

    @property
    def draining(self) -> bool:
        return self._draining.is_set()

    @property
    def master_connected(self) -> bool:
        return self._connected

    # -- job stream ------------------------------------------------------------------------
    async def stream_loop(self) -> None:
        backoff = 0.2
        target = self.config.master_target
        address = f"{self.config.bind_address}:{self.config.server_port}"
        while not self.draining:
            channel = grpc.aio.insecure_channel(
                target,
                options=[
                    ("grpc.keepalive_time_ms", 10_000),
                    ("grpc.keepalive_timeout_ms", 5_000),
                    ("grpc.keepalive_permit_without_calls", 1),
                ],
            )
            try:
                stub = pb_grpc.JobDispatchStub(channel)
                self._stub = stub
                call = stub.Subscribe(
                    pb.SubscribeRequest(
                        worker_id=self.worker_id, node_id=self.config.node_id, address=address
                    ),
                    metadata=self._metadata,
                )
                self._stream_call = call
                async for event in call:
                    kind = event.WhichOneof("kind")
                    if kind == "welcome":
                        self._connected = True
                        metrics.MASTER_CONNECTED.set(1)
                        backoff = 0.2
                        log.info("job stream up (master %s)", event.welcome.master_id)
                    elif kind == "job":
                        self._start_job(stub, event.job)
                if not self.draining:
                    log.warning("job stream closed by the master")
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.CANCELLED and self.draining:
                    break
                log.warning("job stream broken: %s %s", exc.code().name, exc.details())
            except asyncio.CancelledError:
                raise
            finally:
                self._connected = False
                metrics.MASTER_CONNECTED.set(0)
                self._stream_call = None
                if not self._job_tasks:
                    self._stub = None
                    await channel.close()
                else:  # acks of running jobs still need the channel; close it when they end
                    self._close_when_idle(channel)
            if self.draining:
                break
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, 5.0)

    def _close_when_idle(self, channel: grpc.aio.Channel) -> None:
        async def close() -> None:
            await self._jobs_idle.wait()
            await channel.close()

        task = asyncio.create_task(close())
        self._job_tasks.add(task)
        task.add_done_callback(self._job_done)

    def _start_job(self, stub: pb_grpc.JobDispatchStub, job: pb.Job) -> None:
        self._jobs_idle.clear()
        task = asyncio.create_task(self._run_job(stub, job), name=f"job-{job.id}")
        self._job_tasks.add(task)
        task.add_done_callback(self._job_done)

    def _job_done(self, task: asyncio.Task[None]) -> None:
        self._job_tasks.discard(task)
        running = [t for t in self._job_tasks if t.get_name().startswith("job-")]
        if not running:
            self._jobs_idle.set()

    async def apply(self, job: pb.Job) -> bool:
        """Apply once, keyed by job id. True when applied now, False when already applied."""

        async def work() -> bool:
            return await self.docs.apply_job(job.id, self.worker_id, job.attempt, job.payload_json)

        return await self.job_gate.serve(work)

    async def _run_job(self, stub: pb_grpc.JobDispatchStub, job: pb.Job) -> None:
        metrics.JOBS_IN_FLIGHT.inc()
        try:
            try:
                applied = await self.apply(job)
                ack = pb.AckRequest(
                    worker_id=self.worker_id, job_id=job.id, ok=True, duplicate=not applied
                )
                metrics.JOBS_APPLIED.labels("applied" if applied else "duplicate").inc()
            except Exception as exc:
                log.warning("job %s failed: %s", job.id, exc)
                metrics.JOBS_APPLIED.labels("error").inc()
                ack = pb.AckRequest(
                    worker_id=self.worker_id, job_id=job.id, ok=False, error=str(exc)[:500]
                )
            try:
                await stub.Ack(ack, metadata=self._metadata, timeout=10)
            except grpc.aio.AioRpcError as exc:
                # the master will re-dispatch it (stream loss or ack timeout); apply is idempotent
                log.warning("ack of job %s failed: %s", job.id, exc.code().name)
        finally:
            metrics.JOBS_IN_FLIGHT.dec()

    # -- etcd registration -----------------------------------------------------------------
    async def registration_loop(self) -> None:
        key = worker_key(self.config.etcd_prefix, self.config.node_id, self.worker_id)
        value = json.dumps(
            {
                "worker_id": self.worker_id,
                "node_id": self.config.node_id,
                "host": os.uname().nodename,
                "address": self.config.bind_address,
                "port": self.config.server_port,
                "pid": os.getpid(),
                "started": datetime.now(UTC).isoformat(),
            }
        )
        backoff = 1.0
        while not self.draining:
            keeper = LeaseKeeper(self.etcd, REGISTRATION_TTL_S)
            try:
                await keeper.grant()
                await self.etcd.put(key, value, keeper.lease)
            except EtcdError as exc:
                log.warning("etcd registration failed: %s", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            backoff = 1.0
            self.lease = keeper
            keeper.start()
            log.info("registered in etcd as %s", key)
            await keeper.lost.wait()  # set on loss, or by stop() at drain time
        log.debug("registration loop ends")

    # -- drain -----------------------------------------------------------------------------
    async def drain(self, requests_idle: asyncio.Event, deadline: float) -> None:
        """Stop taking jobs, tell the master, wait for in-flight jobs and requests."""
        self._draining.set()
        metrics.DRAINING.set(1)
        log.info("draining: no new jobs; finishing in-flight requests and jobs")
        stub = self._stub
        if stub is not None and self._connected:
            try:
                await stub.Drain(
                    pb.DrainRequest(worker_id=self.worker_id),
                    metadata=self._metadata,
                    timeout=max(0.5, min(5.0, deadline - time.monotonic())),
                )
            except grpc.aio.AioRpcError as exc:
                log.warning("drain call to the master failed: %s", exc.code().name)
        grace_end = time.monotonic() + self.config.drain_grace_s
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._jobs_idle.wait(), max(0.0, deadline - time.monotonic()))
        if self._stream_call is not None:
            self._stream_call.cancel()  # closes the stream cleanly: the master forgets us
        while time.monotonic() < deadline:
            if requests_idle.is_set() and time.monotonic() >= grace_end:
                break
            await asyncio.sleep(0.05)
        if self._job_tasks:
            log.warning("drain timeout: %d job(s) still running", len(self._job_tasks))
        if self.lease is not None:
            await self.lease.stop(revoke=True)
