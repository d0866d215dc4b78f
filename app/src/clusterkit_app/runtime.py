"""Process lifecycle for MODE=master|worker|standalone: start, wait for SIGTERM, stop cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

from . import metrics
from .admin_api import admin_routes
from .broadcast_channel import BroadcastChannel
from .config import Config
from .etcd import EtcdClient, EtcdError
from .http_api import InFlightMiddleware, build_app, read_json_object
from .lease import LeaseKeeper, LockHeld, acquire_lock
from .master import Master, grpc_server
from .store import Documents, JobQueue, redis_for
from .worker import Worker

log = logging.getLogger("clusterkit_app")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CONFIG = 2
EXIT_LOCK_HELD = 3
EXIT_LOCK_LOST = 4
ETCD_START_TIMEOUT_S = 30.0


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: this module owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _http_server(app: Any, host: str, port: int, graceful_s: float) -> _Server:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="off",
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=max(1, int(graceful_s)),
        timeout_keep_alive=5,
    )
    return _Server(config)


def master_lock_key(config: Config) -> str:
    return f"{config.etcd_prefix}/nodes/{config.node_id}/master"


async def _acquire(config: Config, etcd: EtcdClient) -> LeaseKeeper:
    give_up = time.monotonic() + ETCD_START_TIMEOUT_S
    while True:
        try:
            return await acquire_lock(
                etcd,
                master_lock_key(config),
                config.lock_ttl_s,
                config.master_lock_wait,
                extra={"grpc": f"{config.master_server_ip}:{config.master_server_port}"},
            )
        except LockHeld:
            raise
        except EtcdError as exc:
            if time.monotonic() > give_up:
                raise
            log.warning("etcd not usable yet (%s); retrying", exc)
            await asyncio.sleep(1.0)


def broadcast_channel(
    config: Config, redis: Any, master_id: str | None, info: Any = None
) -> BroadcastChannel:
    """The process's end of the broadcast channel: a worker (and standalone) speaks as its
    WORKER_ID, a master as master:<host>:<pid>."""
    if config.mode == "master":
        sender, role = f"master:{master_id}", "master"
    else:
        sender, role = config.worker_id, config.mode
    return BroadcastChannel(
        redis, config.grpc_token, config.node_id, sender, role, db=config.redis_db, info=info
    )


async def run(config: Config) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    etcd = EtcdClient(config.etcd_endpoints, config.etcd_user, config.etcd_password)
    redis = redis_for(config)
    jobs = JobQueue(redis, config.redis_wait_replicas, config.redis_wait_timeout_ms)
    docs: Documents | None = None
    lock: LeaseKeeper | None = None
    master: Master | None = None
    grpc_srv = None
    worker: Worker | None = None
    channel: BroadcastChannel | None = None
    inflight_mw: InFlightMiddleware | None = None
    servers: list[_Server] = []
    watched: list[asyncio.Task[Any]] = []
    background: list[asyncio.Task[Any]] = []
    code = EXIT_OK

    try:
        if config.mode in ("master", "standalone"):
            try:
                lock = await _acquire(config, etcd)
            except LockHeld as held:
                print(
                    f"clusterkit-app: another master for NODE_ID={config.node_id} is running "
                    f"(holder: {held.holder}); refusing to start",
                    file=sys.stderr,
                    flush=True,
                )
                return EXIT_LOCK_HELD
            metrics.MASTER_LOCK_HELD.set(1)
            log.info("master lock %s taken (lease %x)", master_lock_key(config), lock.lease)
            recovered = await jobs.recover()
            if recovered:
                log.info("re-queued %d job(s) left in flight by a previous master", recovered)
            master = Master(
                config.node_id,
                jobs,
                config.grpc_token,
                config.max_jobs_in_flight_per_worker,
                config.job_ack_timeout_s,
                lock,
            )
            grpc_srv = grpc_server(master, config.bind_address, config.master_server_port)
            await grpc_srv.start()
            health = _http_server(
                master.health_app(), config.bind_address, config.master_health_port, 1
            )
            servers.append(health)
            watched.append(asyncio.create_task(health.serve(), name="master-http"))
            watched.append(asyncio.create_task(lock.lost.wait(), name="lock-lost"))
            background.append(asyncio.create_task(master.dispatch_loop(), name="dispatch"))
            background.append(asyncio.create_task(master.sweep_loop(), name="sweep"))
            if config.mode == "master":
                channel = broadcast_channel(config, redis, master.master_id)
            log.info(
                "master for NODE_ID=%s: gRPC on %s:%d, health on %d",
                config.node_id,
                config.bind_address,
                config.master_server_port,
                config.master_health_port,
            )

        if config.mode in ("worker", "standalone"):
            docs = Documents(
                config.mongodb_uri,
                config.mongodb_database,
                config.worker_id,
                config.request_write_concern,
            )
            worker = Worker(config, jobs, docs, etcd)
            w = worker
            channel = broadcast_channel(config, redis, None, info=lambda: {"draining": w.draining})
            admin = admin_routes(
                channel,
                config.grpc_token if config.grpc_token_configured else None,
                read_json_object,
                config.max_body_bytes,
            )
            inflight_mw = InFlightMiddleware(build_app(worker, admin, channel.subscribed.is_set))
            http = _http_server(
                inflight_mw, config.bind_address, config.server_port, config.drain_timeout_s
            )
            servers.append(http)
            watched.append(asyncio.create_task(http.serve(), name="worker-http"))
            background.append(asyncio.create_task(worker.stream_loop(), name="stream"))
            background.append(asyncio.create_task(worker.registration_loop(), name="register"))
            log.info(
                "worker %s: HTTP on %s:%d, master %s",
                config.worker_id,
                config.bind_address,
                config.server_port,
                config.master_target,
            )

        if channel is not None:
            background.append(asyncio.create_task(channel.run(), name="broadcast"))

        stop_task = asyncio.create_task(stop.wait(), name="stop")
        done, _ = await asyncio.wait([stop_task, *watched], return_when=asyncio.FIRST_COMPLETED)
        if stop_task not in done:
            for task in done:
                if task.get_name() == "lock-lost":
                    log.error("master lock lost: stopped dispatching; exiting")
                    code = EXIT_LOCK_LOST
                else:
                    exc = task.exception() if not task.cancelled() else None
                    log.error("%s stopped unexpectedly: %r", task.get_name(), exc)
                    code = EXIT_ERROR
        else:
            log.info("signal received: shutting down")
        stop_task.cancel()

        # -- shutdown: worker first (drain), then master ------------------------------------
        if worker is not None and inflight_mw is not None:
            deadline = time.monotonic() + config.drain_timeout_s
            await worker.drain(inflight_mw.idle, deadline)
        if master is not None:
            await master.close_streams()
        for server in servers:
            server.should_exit = True
        serving = [t for t in watched if t.get_name().endswith("-http")]
        if serving:
            await asyncio.wait(serving, timeout=config.drain_timeout_s + 5)
        if grpc_srv is not None:
            await grpc_srv.stop(grace=1.0)
        return code
    except EtcdError as exc:
        log.error("etcd: %s", exc)
        return EXIT_ERROR
    finally:
        for task in background + watched:
            task.cancel()
        for task in background + watched:
            with contextlib.suppress(BaseException):
                await task
        if lock is not None and code != EXIT_LOCK_LOST:
            await lock.stop(revoke=True)
            metrics.MASTER_LOCK_HELD.set(0)
        if worker is not None and worker.lease is not None:
            await worker.lease.stop(revoke=True)
        if docs is not None:
            await docs.close()
        await redis.aclose()
        await etcd.aclose()
        log.info("stopped (exit %d)", code)
