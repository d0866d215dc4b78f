"""The worker's HTTP API (Starlette)."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pymongo.errors import PyMongoError
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import metrics
from .admin_api import PATHS as ADMIN_PATHS
from .capacity import CapacityGate
from .openapi import OPENAPI
from .store import Documents, JobQueue, utcnow

log = logging.getLogger(__name__)

ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")


def valid_id(value: str) -> bool:
    """Whether ``value`` matches ID_RE as a whole, as the OpenAPI pattern means it (``$`` alone
    would also accept a trailing newline)."""
    return ID_RE.match(value) is not None and not value.endswith("\n")


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class WorkerContext(Protocol):
    """What the HTTP layer needs from the running worker."""

    worker_id: str
    jobs: JobQueue
    docs: Documents
    gate: CapacityGate
    max_body_bytes: int

    @property
    def draining(self) -> bool: ...

    @property
    def master_connected(self) -> bool: ...


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _is_json_media_type(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number out of range: {text[:32]}")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


async def read_json_object(request: Request, limit: int) -> dict[str, Any]:
    content_type = request.headers.get("content-type")
    if content_type is not None and not _is_json_media_type(content_type):
        raise ApiError(415, "Content-Type must be application/json")
    length = request.headers.get("content-length")
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise ApiError(400, "invalid Content-Length") from None
        if declared > limit:
            raise ApiError(413, f"body larger than {limit} bytes")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise ApiError(413, f"body larger than {limit} bytes")
    except ClientDisconnect:
        # The body ended before its Content-Length: the client's fault, not a server error.
        raise ApiError(400, "client disconnected before the end of the body") from None
    if not body:
        raise ApiError(400, "empty body: a JSON object is expected")
    try:
        # NaN, Infinity and numbers beyond a float's range are refused: they could be stored
        # but not returned (JSON responses are strict).
        data = json.loads(bytes(body), parse_float=_finite, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise ApiError(400, "body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ApiError(422, "body must be a JSON object")
    return data


def _payload(data: dict[str, Any]) -> str:
    payload = data.get("payload", {})
    if payload is None:
        payload = {}
    if not isinstance(payload, dict):
        raise ApiError(422, "'payload' must be a JSON object")
    try:
        return json.dumps(payload, separators=(",", ":"), sort_keys=True)
    except (ValueError, RecursionError):
        raise ApiError(422, "'payload' cannot be stored") from None


def _optional_id(data: dict[str, Any], field: str) -> str | None:
    value = data.get(field)
    if value is None:
        return None
    if not isinstance(value, str) or not valid_id(value):
        raise ApiError(422, f"'{field}' must be a string matching {ID_RE.pattern}")
    return value


def build_app(
    ctx: WorkerContext,
    extra_routes: list[Route] | None = None,
    broadcast_up: Callable[[], bool] | None = None,
) -> Starlette:
    """The worker API; ``extra_routes`` (the admin endpoints) are added as they are, and
    ``broadcast_up`` is reported by /healthz (not required, like the job stream)."""

    async def healthz(request: Request) -> Response:
        if ctx.draining:
            return JSONResponse({"status": "draining", "worker_id": ctx.worker_id}, 503)
        problems: list[str] = []
        try:
            await asyncio.wait_for(ctx.jobs.redis.ping(), 2.0)
        except (RedisError, OSError, TimeoutError) as exc:
            problems.append(f"redis: {exc or type(exc).__name__}")
        try:
            await asyncio.wait_for(ctx.docs.ping(), 2.0)
        except (PyMongoError, OSError, TimeoutError) as exc:
            problems.append(f"mongodb: {exc or type(exc).__name__}")
        # The job stream is reported, not required: requests and job submits need only Redis
        # and MongoDB, so a worker keeps serving (and stays in the load balancer) while the
        # master restarts or fails over; its queued jobs wait in Redis meanwhile.
        master = "connected" if ctx.master_connected else "disconnected"
        body: dict[str, Any] = {"worker_id": ctx.worker_id, "master": master}
        if broadcast_up is not None:
            body["broadcast"] = "subscribed" if broadcast_up() else "disconnected"
        if problems:
            return JSONResponse({"status": "unavailable", **body, "reasons": problems}, 503)
        return JSONResponse({"status": "ok", **body})

    async def post_request(request: Request) -> Response:
        arrived = time.monotonic()
        data = await read_json_object(request, ctx.max_body_bytes)
        payload = _payload(data)
        session = _optional_id(data, "session") or uuid.uuid4().hex
        request_id = uuid.uuid4().hex

        async def work() -> None:
            await ctx.docs.insert_request(
                {
                    "_id": request_id,
                    "worker_id": ctx.worker_id,
                    "session": session,
                    "payload": payload,
                    "created_at": utcnow(),
                }
            )
            await ctx.jobs.touch_session(session)

        await ctx.gate.serve(work)
        metrics.REQUEST_SECONDS.observe(time.monotonic() - arrived)
        return JSONResponse(
            {"id": request_id, "worker_id": ctx.worker_id, "session": session},
            headers={"X-Worker-Id": ctx.worker_id},
        )

    async def get_request(request: Request) -> Response:
        request_id = request.path_params["id"]
        doc = await ctx.docs.get_request(request_id) if valid_id(request_id) else None
        if doc is None:
            raise ApiError(404, "unknown request id")
        doc["id"] = doc.pop("_id")
        doc["payload"] = json.loads(doc["payload"])
        doc["created_at"] = doc["created_at"].isoformat()
        return JSONResponse(doc, headers={"X-Worker-Id": ctx.worker_id})

    async def post_job(request: Request) -> Response:
        data = await read_json_object(request, ctx.max_body_bytes)
        payload = _payload(data)
        job_id = _optional_id(data, "id") or uuid.uuid4().hex
        created = await ctx.jobs.submit(job_id, payload)
        if created:
            metrics.JOBS_SUBMITTED.inc()
        return JSONResponse(
            {"id": job_id, "created": created}, 202, headers={"X-Worker-Id": ctx.worker_id}
        )

    async def get_job(request: Request) -> Response:
        job_id = request.path_params["id"]
        if not valid_id(job_id):
            raise ApiError(404, "unknown job id")
        record = await ctx.jobs.get(job_id)
        applied = await ctx.docs.get_applied(job_id)
        if not record and applied is None:
            raise ApiError(404, "unknown job id")
        body: dict[str, Any] = {
            "id": job_id,
            "status": "applied" if applied is not None else record.get("status", "queued"),
            "attempts": int(record.get("attempts", applied.get("attempt", 1) if applied else 0)),
            "submitted_at": record.get("submitted_at"),
            "applied_by": applied["worker_id"] if applied else None,
            "applied_at": applied["applied_at"].isoformat() if applied else None,
        }
        return JSONResponse(body, headers={"X-Worker-Id": ctx.worker_id})

    async def metrics_endpoint(request: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    async def openapi(request: Request) -> Response:
        return JSONResponse(OPENAPI)

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return _error(exc.status, exc.message)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return _error(exc.status_code, str(exc.detail))

    async def backend_error(request: Request, exc: Exception) -> Response:
        log.warning("%s %s: backend error: %s", request.method, request.url.path, exc)
        return _error(503, f"backend unavailable: {type(exc).__name__}")

    app = Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/api/requests", post_request, methods=["POST"]),
            Route("/api/requests/{id}", get_request, methods=["GET"]),
            Route("/api/jobs", post_job, methods=["POST"]),
            Route("/api/jobs/{id}", get_job, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
            Route("/openapi.json", openapi, methods=["GET"]),
            *(extra_routes or []),
        ],
        exception_handlers={
            ApiError: api_error,
            HTTPException: http_error,
            RedisError: backend_error,
            PyMongoError: backend_error,
        },
    )
    return app


ROUTES = frozenset(
    {"/api/requests", "/api/jobs", "/healthz", "/metrics", "/openapi.json", *ADMIN_PATHS}
)


def route_label(path: str) -> str:
    for prefix in ("/api/requests/", "/api/jobs/"):
        if path.startswith(prefix):
            return prefix + "{id}"
    if path in ROUTES:
        return path
    return "other"


class InFlightMiddleware:
    """Counts API requests in progress (for the drain) and records the request counter."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.idle.set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = route_label(scope["path"])
        counted = route.startswith("/api/")
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        if counted:
            self.in_flight += 1
            self.idle.clear()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            if counted:
                self.in_flight -= 1
                if self.in_flight == 0:
                    self.idle.set()
            metrics.HTTP_REQUESTS.labels(scope["method"], route, str(status)).inc()
