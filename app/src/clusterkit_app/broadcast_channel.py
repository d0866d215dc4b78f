"""The cluster broadcast channel: signed messages to every live process of a NODE_ID, over Redis
pub/sub on the app's own Redis client (single Redis or Sentinel-managed primary).

Delivery: at most once to the processes subscribed when a message is published. Redis pub/sub
keeps nothing: a process that is disconnected (Redis restart, Sentinel failover, network cut)
misses what is published until it has subscribed again. Receivers deduplicate by message id, so
a message seen twice is acted on once. See broadcast.py for the message format and checks.

Channels (pub/sub is not per database, so the database and NODE_ID are in the name):
  clusterkit:<db>:<NODE_ID>:broadcast          every process of the node
  clusterkit:<db>:<NODE_ID>:reply:<sender id>  replies to one process (roll call)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from . import metrics
from .broadcast import REPLAY_WINDOW_S, Message, Rejected, ReplayGuard, open_message, seal

log = logging.getLogger(__name__)

Handler = Callable[[Message], Awaitable[None]]
ROLLCALL, ROLLCALL_REPLY = "rollcall", "rollcall-reply"
RESERVED_KINDS = frozenset({ROLLCALL, ROLLCALL_REPLY})
POLL_S = 1.0
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.2, 5.0
PUBLISH_RETRY_S = 5.0

# PUBLISH alone runs on a replica too (delivered there only). The write makes a connection still
# on a demoted primary fail with READONLY, which the Sentinel client treats as a broken connection
# and retries on the current primary, as it does for job submits.
_PUBLISH = """
redis.call('INCR', KEYS[1])
return redis.call('PUBLISH', ARGV[1], ARGV[2])
"""


def channel_names(db: int, node_id: str, sender_id: str) -> tuple[str, str]:
    base = f"clusterkit:{db}:{node_id}"
    return f"{base}:broadcast", f"{base}:reply:{sender_id}"


class BroadcastUnavailable(Exception):
    """Not subscribed right now (Redis unreachable): a roll call could not hear the replies."""


class BroadcastChannel:
    def __init__(
        self,
        redis: aioredis.Redis,
        token: str,
        node_id: str,
        sender_id: str,
        role: str,
        db: int = 0,
        window_s: float = REPLAY_WINDOW_S,
        info: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.redis = redis
        self.token = token
        self.node_id = node_id
        self.sender_id = sender_id
        self.role = role
        self.db = db
        self.info = info or dict
        self.channel, self.reply_channel = channel_names(db, node_id, sender_id)
        self.guard = ReplayGuard(window_s)
        self.subscribed = asyncio.Event()
        self.subscriptions = 0
        self.sent: Counter[str] = Counter()
        self.received: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self._handlers: dict[str, list[Handler]] = {}
        self._pending: dict[str, dict[str, dict[str, Any]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._publish = redis.register_script(_PUBLISH)
        self.on(ROLLCALL, self._answer_rollcall)
        self.on(ROLLCALL_REPLY, self._collect_reply)

    def on(self, kind: str, handler: Handler) -> None:
        """Call ``handler`` with every accepted message of ``kind`` (in the subscriber's task:
        keep it short; it runs once per message, and an exception is logged and counted)."""
        self._handlers.setdefault(kind, []).append(handler)

    async def publish(self, kind: str, payload: dict[str, Any], to: str = "*") -> Message:
        """Sign and publish. Returns the message once the primary has published it. While Redis
        fails (a failover: connections still on the demoted primary, Sentinels not agreed yet)
        the same bytes are sent again for up to PUBLISH_RETRY_S: a copy that did get out is
        acted on once (same id). Then raises RedisError (sent at most once, maybe not at all).
        ValueError on a bad kind or payload."""
        msg, wire = seal(self.token, kind, payload, self.sender_id, self.node_id, to)
        channel = self.channel if to == "*" else channel_names(self.db, self.node_id, to)[1]
        keys = [f"broadcast:published:{self.node_id}"]
        deadline = time.monotonic() + PUBLISH_RETRY_S
        pause = 0.05
        while True:
            try:
                await self._publish(keys=keys, args=[channel, wire])
                break
            except (RedisError, OSError) as exc:
                if time.monotonic() + pause > deadline:
                    raise
                log.info("broadcast %s %s not published yet (%s); resending", kind, msg.id, exc)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.5)
        self.sent[kind] += 1
        metrics.BROADCAST_SENT.labels(kind).inc()
        return msg

    # -- subscriber ------------------------------------------------------------------------
    async def run(self) -> None:
        """Subscribe, deliver, and subscribe again after any failure, with backoff; returns
        only when cancelled."""
        backoff = BACKOFF_MIN_S
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(self.channel, self.reply_channel)
                while True:
                    try:
                        item = await pubsub.get_message(timeout=POLL_S)
                    except UnicodeDecodeError:  # a raw non-UTF-8 publish; the stream is intact
                        self._drop("malformed", "not UTF-8")
                        continue
                    if item is None:
                        continue
                    if item["type"] == "subscribe":
                        self._on_subscribed(item)
                        backoff = BACKOFF_MIN_S
                    elif item["type"] == "message":
                        await self.deliver(item["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis gone, failover, anything: never end the task
                log.warning(
                    "broadcast subscription lost (%s: %s); subscribing again in %.1f s",
                    type(exc).__name__,
                    exc,
                    backoff,
                )
            finally:
                self._set_subscribed(False)
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    def _on_subscribed(self, item: dict[str, Any]) -> None:
        # one confirmation per channel, also after redis-py reconnected by itself (its retry);
        # the reply channel is subscribed last
        if item["channel"] == self.reply_channel:
            self.subscriptions += 1
            metrics.BROADCAST_SUBSCRIPTIONS.inc()
            self._set_subscribed(True)
            log.info("broadcast: subscribed (%d time(s)) to %s", self.subscriptions, self.channel)

    def _set_subscribed(self, up: bool) -> None:
        if up:
            self.subscribed.set()
        else:
            self.subscribed.clear()
        metrics.BROADCAST_SUBSCRIBED.set(1 if up else 0)

    def _drop(self, reason: str, detail: str) -> None:
        self.dropped[reason] += 1
        metrics.BROADCAST_DROPPED.labels(reason).inc()
        log.warning("broadcast message dropped: %s (%s)", reason, detail[:200])

    async def deliver(self, raw: str | bytes) -> Message | None:
        """Check one message off the wire and run its handlers. None when it was dropped."""
        try:
            msg = open_message(raw, self.token)
            self.guard.check(msg, self.node_id, self.sender_id)
        except Rejected as exc:
            self._drop(exc.reason, str(exc))
            return None
        self.received[msg.kind] += 1
        metrics.BROADCAST_RECEIVED.labels(msg.kind).inc()
        for handler in self._handlers.get(msg.kind, ()):
            try:
                await handler(msg)
            except Exception:
                metrics.BROADCAST_HANDLER_ERRORS.labels(msg.kind).inc()
                log.exception("broadcast handler for %s failed", msg.kind)
        return msg

    # -- roll call -------------------------------------------------------------------------
    async def rollcall(self, timeout_s: float) -> list[dict[str, Any]]:
        """Ask every live process to answer; the answers that came within timeout_s."""
        if not self.subscribed.is_set():
            raise BroadcastUnavailable("not subscribed to the broadcast channel")
        request = uuid.uuid4().hex
        answers: dict[str, dict[str, Any]] = {}
        self._pending[request] = answers
        try:
            await self.publish(ROLLCALL, {"request": request})
            await asyncio.sleep(timeout_s)
        finally:
            del self._pending[request]
        return [answers[k] for k in sorted(answers)]

    async def _answer_rollcall(self, msg: Message) -> None:
        payload = {"request": msg.payload.get("request"), "role": self.role, **self.info()}

        async def reply() -> None:
            try:
                await self.publish(ROLLCALL_REPLY, payload, to=msg.sender)
            except Exception as exc:
                log.warning("roll call reply to %s failed: %s", msg.sender, exc)

        task = asyncio.create_task(reply())  # not in the subscriber's way
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _collect_reply(self, msg: Message) -> None:
        answers = self._pending.get(str(msg.payload.get("request")))
        if answers is not None:
            answers[msg.sender] = {**msg.payload, "id": msg.sender}

    def stats(self) -> dict[str, Any]:
        return {
            "id": self.sender_id,
            "role": self.role,
            "node_id": self.node_id,
            "channel": self.channel,
            "subscribed": self.subscribed.is_set(),
            "subscriptions": self.subscriptions,
            "sent": dict(self.sent),
            "received": dict(self.received),
            "dropped": dict(self.dropped),
        }
