"""Admin endpoints of the worker HTTP API: the broadcast channel (roll call, broadcast, stats).

Authenticated with the cluster's server token (GRPC_TOKEN) as ``Authorization: Bearer <token>``,
compared in constant time. Without a configured token (MODE=standalone without GRPC_TOKEN) the
endpoints answer 403 and do nothing.
"""

from __future__ import annotations

import hmac
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .broadcast import KIND_RE
from .broadcast_channel import RESERVED_KINDS, BroadcastChannel, BroadcastUnavailable

log = logging.getLogger(__name__)

ROLLCALL_DEFAULT_S = 1.0
ROLLCALL_MIN_S, ROLLCALL_MAX_S = 0.05, 10.0
ReadJson = Callable[[Request, int], Awaitable[dict[str, Any]]]
PATHS = ("/api/admin/broadcast", "/api/admin/rollcall")


def _error(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


def admin_routes(
    channel: BroadcastChannel, token: str | None, read_json: ReadJson, max_body: int
) -> list[Route]:
    """Routes for build_app. ``token`` None or empty: the endpoints are disabled (403)."""
    expected = f"Bearer {token}".encode() if token else None
    if expected is None:
        log.warning(
            "admin endpoints %s disabled: no server token configured (set GRPC_TOKEN)",
            ", ".join(PATHS),
        )

    def denied(request: Request) -> Response | None:
        if expected is None:
            return _error(403, "admin endpoints are disabled: GRPC_TOKEN is not configured")
        presented = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(presented, expected):
            return _error(401, "missing or wrong bearer token", **{"WWW-Authenticate": "Bearer"})
        return None

    async def get_broadcast(request: Request) -> Response:
        if (refused := denied(request)) is not None:
            return refused
        return JSONResponse(channel.stats())

    async def post_broadcast(request: Request) -> Response:
        if (refused := denied(request)) is not None:
            return refused
        data = await read_json(request, max_body)
        kind, payload = data.get("kind"), data.get("payload", {})
        if not isinstance(kind, str) or not KIND_RE.match(kind) or kind in RESERVED_KINDS:
            return _error(422, f"'kind' must match {KIND_RE.pattern} and not be reserved")
        if not isinstance(payload, dict):
            return _error(422, "'payload' must be a JSON object")
        try:
            msg = await channel.publish(kind, payload)
        except ValueError as exc:
            return _error(413, str(exc))
        except (RedisError, OSError) as exc:
            return _error(503, f"broadcast not sent: {type(exc).__name__}")
        log.info("admin broadcast %s %s", kind, msg.id)
        return JSONResponse({"id": msg.id, "kind": kind, "ts": msg.ts_ms}, 202)

    async def post_rollcall(request: Request) -> Response:
        if (refused := denied(request)) is not None:
            return refused
        raw = request.query_params.get("timeout", str(ROLLCALL_DEFAULT_S))
        try:
            timeout = float(raw)
        except ValueError:
            timeout = math.nan
        if not ROLLCALL_MIN_S <= timeout <= ROLLCALL_MAX_S:
            return _error(
                422, f"timeout must be a number of seconds in [{ROLLCALL_MIN_S}, {ROLLCALL_MAX_S}]"
            )
        try:
            nodes = await channel.rollcall(timeout)
        except (BroadcastUnavailable, RedisError, OSError) as exc:
            return _error(503, f"roll call not possible: {exc or type(exc).__name__}")
        return JSONResponse(
            {
                "timeout_s": timeout,
                "asked_by": channel.sender_id,
                "count": len(nodes),
                "ids": [n["id"] for n in nodes],
                "nodes": nodes,
            }
        )

    return [
        Route("/api/admin/broadcast", get_broadcast, methods=["GET"]),
        Route("/api/admin/broadcast", post_broadcast, methods=["POST"]),
        Route("/api/admin/rollcall", post_rollcall, methods=["POST"]),
    ]
