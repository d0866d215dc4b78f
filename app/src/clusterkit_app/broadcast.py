"""Signed broadcast messages: the wire format and its checks (pure functions, no I/O).

A message on the wire is ``ck1.<signature>.<body>``: ``body`` is compact JSON

    {"id": "<32 hex>", "kind": "invalidate-cache", "from": "<sender id>", "node": "<NODE_ID>",
     "to": "*" | "<sender id>", "ts": <unix ms>, "payload": {...}}

and ``signature`` the hex HMAC-SHA256 of ``ck1.<body>`` keyed by the cluster's server token
(GRPC_TOKEN). A receiver checks the signature over the exact bytes before it parses the body,
then the fields, the cluster (``node``) and recipient (``to``), the timestamp against a replay
window, and the id against the ids it has seen (``ReplayGuard``). Any failure is a ``Rejected``
with a reason (the label of ``clusterkit_broadcast_dropped_total``); a rejected message is never
acted on.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

VERSION = "ck1"
MAX_MESSAGE_BYTES = 256 * 1024
REPLAY_WINDOW_S = 30.0
KIND_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
SENDER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,159}$")
_ID_RE = re.compile(r"^[0-9a-f]{32}$")
_SIG_RE = re.compile(r"^[0-9a-f]{64}$")

# reasons a message is dropped (label values of clusterkit_broadcast_dropped_total)
REASONS = (
    "too_large",  # more than MAX_MESSAGE_BYTES
    "malformed",  # not UTF-8, or not ck1.<sig>.<body>
    "unsigned",  # no signature
    "bad_signature",  # signature does not match the body under this cluster's token
    "bad_json",  # signed, but the body is not a JSON object with the expected fields
    "misdirected",  # for another NODE_ID, or a reply for another node
    "stale",  # timestamp outside the replay window
    "duplicate",  # id seen before
)


class Rejected(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class Message:
    id: str
    kind: str
    sender: str
    node: str
    to: str
    ts_ms: int
    payload: dict[str, Any] = field(default_factory=dict)


def now_ms() -> int:
    return int(time.time() * 1000)


def _mac(token: str, body: bytes) -> str:
    return hmac.new(token.encode(), VERSION.encode() + b"." + body, hashlib.sha256).hexdigest()


def seal(
    token: str,
    kind: str,
    payload: dict[str, Any],
    sender: str,
    node: str,
    to: str = "*",
    ts_ms: int | None = None,
    msg_id: str | None = None,
) -> tuple[Message, str]:
    """A new message and its wire form. Raises ValueError on a bad kind, sender or size."""
    if not token:
        raise ValueError("no server token: messages cannot be signed")
    if not KIND_RE.match(kind):
        raise ValueError(f"kind must match {KIND_RE.pattern}, got {kind!r}")
    if not SENDER_RE.match(sender) or (to != "*" and not SENDER_RE.match(to)):
        raise ValueError(f"bad sender or recipient id: {sender!r} -> {to!r}")
    msg = Message(
        id=msg_id or uuid.uuid4().hex,
        kind=kind,
        sender=sender,
        node=node,
        to=to,
        ts_ms=now_ms() if ts_ms is None else ts_ms,
        payload=payload,
    )
    body = json.dumps(
        {
            "id": msg.id,
            "kind": msg.kind,
            "from": msg.sender,
            "node": msg.node,
            "to": msg.to,
            "ts": msg.ts_ms,
            "payload": msg.payload,
        },
        separators=(",", ":"),
        allow_nan=False,
    ).encode()
    wire = f"{VERSION}.{_mac(token, body)}.".encode() + body
    if len(wire) > MAX_MESSAGE_BYTES:
        raise ValueError(f"message larger than {MAX_MESSAGE_BYTES} bytes")
    return msg, wire.decode()


def _field(data: dict[str, Any], name: str, kind: type) -> Any:
    value = data.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise Rejected("bad_json", f"field {name!r} missing or not {kind.__name__}")
    return value


def open_message(raw: str | bytes, token: str) -> Message:
    """Verify the signature, then parse. Raises Rejected (never returns an unverified message)."""
    if len(raw) > MAX_MESSAGE_BYTES:
        raise Rejected("too_large")
    try:
        data = raw.encode() if isinstance(raw, str) else raw
        data.decode()
    except UnicodeError:
        raise Rejected("malformed", "not UTF-8") from None
    version, dot, rest = data.partition(b".")
    if not dot or version != VERSION.encode():
        raise Rejected("unsigned" if data.lstrip().startswith(b"{") else "malformed")
    sig, dot, body = rest.partition(b".")
    if not dot:
        raise Rejected("malformed", "no body")
    if not sig:
        raise Rejected("unsigned")
    if not _SIG_RE.match(sig.decode()) or not token:
        raise Rejected("bad_signature")
    if not hmac.compare_digest(_mac(token, body).encode(), sig):
        raise Rejected("bad_signature")
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        raise Rejected("bad_json", "body is not JSON") from None
    if not isinstance(parsed, dict):
        raise Rejected("bad_json", "body is not an object")
    msg = Message(
        id=_field(parsed, "id", str),
        kind=_field(parsed, "kind", str),
        sender=_field(parsed, "from", str),
        node=_field(parsed, "node", str),
        to=_field(parsed, "to", str),
        ts_ms=_field(parsed, "ts", int),
        payload=_field(parsed, "payload", dict),
    )
    if not _ID_RE.match(msg.id) or not KIND_RE.match(msg.kind) or not SENDER_RE.match(msg.sender):
        raise Rejected("bad_json", "bad id, kind or sender")
    return msg


class ReplayGuard:
    """Accepts a verified message once, and only within ``window_s`` of its timestamp.

    An id is remembered for 2 x window after it arrived (a message older than that is outside
    the window anyway). At most ``capacity`` ids are kept: when older ones must be forgotten
    early, every message not newer than the newest timestamp forgotten is refused as stale, so
    that no forgotten id can be accepted again.
    """

    def __init__(self, window_s: float = REPLAY_WINDOW_S, capacity: int = 100_000) -> None:
        self.window_ms = int(window_s * 1000)
        self.capacity = capacity
        self._seen: OrderedDict[str, tuple[int, int]] = OrderedDict()  # id -> (arrival, ts)
        self._floor_ts = -1

    def __len__(self) -> int:
        return len(self._seen)

    def check(self, msg: Message, node: str, me: str, now: int | None = None) -> None:
        """Raises Rejected unless msg is for this cluster and recipient, fresh and new."""
        now = now_ms() if now is None else now
        if msg.node != node or msg.to not in ("*", me):
            raise Rejected("misdirected", f"{msg.node}/{msg.to}")
        if abs(now - msg.ts_ms) > self.window_ms or msg.ts_ms <= self._floor_ts:
            raise Rejected("stale", f"{(now - msg.ts_ms) / 1000:.1f} s old")
        self._expire(now)
        if msg.id in self._seen:
            raise Rejected("duplicate", msg.id)
        self._seen[msg.id] = (now, msg.ts_ms)
        while len(self._seen) > self.capacity:
            _, (_, ts) = self._seen.popitem(last=False)
            self._floor_ts = max(self._floor_ts, ts)

    def _expire(self, now: int) -> None:
        horizon = now - 2 * self.window_ms
        while self._seen:
            first = next(iter(self._seen))
            if self._seen[first][0] >= horizon:
                break
            del self._seen[first]
