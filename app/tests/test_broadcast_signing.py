"""The broadcast wire format: signing, verification and the replay guard (pure functions)."""

from __future__ import annotations

import json

import pytest

from clusterkit_app.broadcast import (
    MAX_MESSAGE_BYTES,
    Message,
    Rejected,
    ReplayGuard,
    now_ms,
    open_message,
    seal,
)

TOKEN = "s3cret-token"


def sealed(**kw: object) -> tuple[Message, str]:
    args: dict[str, object] = {"kind": "config", "payload": {"a": 1}, "sender": "w1", "node": "n1"}
    args.update(kw)
    return seal(TOKEN, **args)  # type: ignore[arg-type]


def reason(raw: str | bytes, token: str = TOKEN) -> str:
    with pytest.raises(Rejected) as info:
        open_message(raw, token)
    return info.value.reason


def test_round_trip() -> None:
    msg, wire = sealed(payload={"x": [1, 2.5, "é"], "n": None})
    assert wire.startswith("ck1.")
    assert open_message(wire, TOKEN) == msg
    assert open_message(wire.encode(), TOKEN) == msg
    assert len(msg.id) == 32 and abs(msg.ts_ms - now_ms()) < 5000


def test_each_message_has_its_own_id() -> None:
    assert sealed()[0].id != sealed()[0].id


def test_wrong_token_is_a_bad_signature() -> None:
    _, wire = sealed()
    assert reason(wire, "other-token") == "bad_signature"
    assert reason(wire, "") == "bad_signature"


def test_any_change_to_the_body_breaks_the_signature() -> None:
    _, wire = sealed(payload={"admin": False})
    assert reason(wire.replace('"admin":false', '"admin":true ')) == "bad_signature"
    assert reason(wire.replace('"from":"w1"', '"from":"w2"')) == "bad_signature"
    head, sig, body = wire.split(".", 2)
    flipped = sig[:-1] + ("0" if sig[-1] != "0" else "1")
    assert reason(f"{head}.{flipped}.{body}") == "bad_signature"
    assert reason(f"{head}.{sig.upper()}.{body}") == "bad_signature"
    assert reason(f"{head}.{sig[:10]}.{body}") == "bad_signature"


def test_unsigned_and_malformed() -> None:
    _, wire = sealed()
    body = wire.split(".", 2)[2]
    assert reason(body) == "unsigned"  # plain JSON
    assert reason(f"ck1..{body}") == "unsigned"
    assert reason("hello") == "malformed"
    assert reason("ck1.abc") == "malformed"
    assert reason(b"\xff\xfe") == "malformed"
    assert reason("ck2." + wire[4:]) == "malformed"
    assert reason("x" * (MAX_MESSAGE_BYTES + 1)) == "too_large"


def forge(body: object) -> str:
    """A correctly signed wire message around an arbitrary body (as a token holder could)."""
    import hashlib
    import hmac

    raw = body if isinstance(body, str) else json.dumps(body)
    mac = hmac.new(TOKEN.encode(), b"ck1." + raw.encode(), hashlib.sha256).hexdigest()
    return f"ck1.{mac}.{raw}"


def fields(**changed: object) -> dict[str, object]:
    base: dict[str, object] = {
        "id": "0" * 32,
        "kind": "x",
        "from": "w",
        "node": "n1",
        "to": "*",
        "ts": 1,
        "payload": {},
    }
    return {k: v for k, v in {**base, **changed}.items() if v is not None}


@pytest.mark.parametrize(
    "body",
    [
        "{not json",
        "[1, 2]",
        {"kind": "x"},
        fields(payload=None),
        fields(ts="1"),
        fields(ts=True),
        fields(id="short"),
        fields(kind="BAD KIND"),
        fields(payload=[]),
        fields(**{"from": "bad sender"}),
    ],
)
def test_signed_but_malformed_body_is_bad_json(body: object) -> None:
    assert reason(forge(body)) == "bad_json"


def test_seal_refuses_bad_input() -> None:
    with pytest.raises(ValueError):
        seal("", "config", {}, "w1", "n1")
    with pytest.raises(ValueError):
        sealed(kind="Bad Kind")
    with pytest.raises(ValueError):
        sealed(sender="bad sender")
    with pytest.raises(ValueError):
        sealed(payload={"big": "x" * MAX_MESSAGE_BYTES})
    with pytest.raises(ValueError):
        sealed(payload={"nan": float("nan")})


def check(guard: ReplayGuard, msg: Message, now: int, me: str = "w1") -> str | None:
    try:
        guard.check(msg, "n1", me, now)
    except Rejected as exc:
        return exc.reason
    return None


def test_guard_accepts_once() -> None:
    guard = ReplayGuard(window_s=30)
    msg, _ = sealed(ts_ms=1_000_000)
    assert check(guard, msg, 1_000_100) is None
    assert check(guard, msg, 1_000_200) == "duplicate"
    assert check(guard, msg, 1_020_000) == "duplicate"


def test_guard_window_both_ways() -> None:
    guard = ReplayGuard(window_s=30)
    assert check(guard, sealed(ts_ms=1_000_000)[0], 1_030_001) == "stale"
    assert check(guard, sealed(ts_ms=1_000_000)[0], 969_999) == "stale"  # from the future
    assert check(guard, sealed(ts_ms=1_000_000)[0], 1_030_000) is None


def test_guard_checks_cluster_and_recipient() -> None:
    guard = ReplayGuard()
    now = now_ms()
    assert check(guard, sealed(node="n2")[0], now) == "misdirected"
    assert check(guard, sealed(to="w2")[0], now) == "misdirected"
    assert check(guard, sealed(to="w1")[0], now) is None
    assert check(guard, sealed()[0], now) is None


def test_guard_forgets_only_what_the_window_refuses_anyway() -> None:
    guard = ReplayGuard(window_s=1)
    old, _ = sealed(ts_ms=0)
    assert check(guard, old, 500) is None
    for t in range(1, 6):
        check(guard, sealed(ts_ms=t * 1000)[0], t * 1000 + 500)
    assert len(guard) <= 3  # ids kept 2 x window after arrival
    assert check(guard, old, 5_500) == "stale"


def test_guard_over_capacity_refuses_what_it_forgot() -> None:
    guard = ReplayGuard(window_s=30, capacity=3)
    msgs = [sealed(ts_ms=1000 + i)[0] for i in range(5)]
    for m in msgs:
        assert check(guard, m, 2000) is None
    assert len(guard) == 3
    assert check(guard, msgs[0], 2000) == "stale"  # forgotten, but not accepted again
    assert check(guard, msgs[1], 2000) == "stale"
    assert check(guard, msgs[4], 2000) == "duplicate"
