"""Fuzzing a real worker process over HTTP: no input is answered with a 5xx.

One master and one worker run against the session's real redis-server, mongod and etcd. Request
bodies are generated from the worker's own OpenAPI description (GET /openapi.json), then broken
in every way a client can break them: wrong types and patterns per field, any JSON value, bytes
that are not JSON, oversized bodies, wrong or lying Content-Type and Content-Length headers, any
path and method. Every answer must be below 500, and a 4xx must carry a JSON error.
"""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clusterkit_app.devservers import EtcdServer, MongoServer, RedisServer

from .conftest import Cluster

pytestmark = pytest.mark.integration

MAX_BODY = 4096
FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def worker(
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: RedisServer,
    mongo_server: MongoServer,
    etcd_server: EtcdServer,
) -> Iterator[str]:
    """Base URL of a real worker (with its master), serving without the capacity model's delay."""
    tag = uuid.uuid4().hex[:8]
    env = {
        **redis_server.env(),
        **etcd_server.env(),
        "REDIS_DB": "0",
        "MONGODB_URI": mongo_server.uri,
        "MONGODB_DATABASE": f"ck_fuzz_{tag}",
        "ETCD_PREFIX": f"/ck-fuzz-{tag}",
        "NODE_ID": f"fuzz-{tag}",
        "GRPC_TOKEN": f"token-{tag}",
        "BIND_ADDRESS": "127.0.0.1",
        "LOG_LEVEL": "WARNING",
    }
    cluster = Cluster(tmp_path_factory.mktemp("fuzz"), env)
    try:
        master, health = cluster.start_master()
        master.wait_healthy(health)
        proc, port = cluster.start_worker(
            "w-fuzz", SERVICE_TIME_MS="0", MAX_BODY_BYTES=str(MAX_BODY)
        )
        proc.wait_healthy(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def http(worker: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=worker, timeout=20) as client:
        yield client


@pytest.fixture(scope="module")
def spec(http: httpx.Client) -> dict[str, Any]:
    resp = http.get("/openapi.json")
    assert resp.status_code == 200
    return dict(resp.json())


# ---------------------------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def from_schema(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values valid for the subset of JSON Schema the worker's OpenAPI uses."""
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties", {})
        if not props:
            return st.dictionaries(st.text(max_size=8), json_values, max_size=4)
        return st.fixed_dictionaries(
            {}, optional={name: from_schema(sub) for name, sub in props.items()}
        )
    if kind == "string":
        if "pattern" in schema:
            return st.from_regex(schema["pattern"].replace("$", r"\Z"), fullmatch=True)
        return st.text(max_size=40)
    if kind == "integer":
        return st.integers()
    if kind == "boolean":
        return st.booleans()
    return json_values


def broken(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Objects where one declared property has any JSON value (often of the wrong type), plus
    unknown properties."""
    props = list(schema.get("properties", {}))
    return st.builds(
        lambda valid, name, value, extra: {**valid, name: value, **extra},
        from_schema(schema),
        st.sampled_from(props),
        json_values | st.text(max_size=300) | st.sampled_from(["", "-x", "a\n", "a b", "é"]),
        st.dictionaries(st.text(max_size=8), json_values, max_size=2),
    )


def body_schema(spec: dict[str, Any], path: str) -> dict[str, Any]:
    body = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    return dict(body)


CONTENT_TYPES = st.sampled_from(
    [
        "application/json",
        "application/json; charset=utf-8",
        "application/problem+json",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "",
        "application/jsonx",
        "*/*",
    ]
)


def encoded(value: Any) -> st.SearchStrategy[bytes]:
    text = json.dumps(value)
    return st.sampled_from([text.encode(), text.encode("utf-16"), (text + "\n").encode()])


def check(resp: httpx.Response) -> None:
    assert resp.status_code < 500, (resp.status_code, resp.text[:500])
    if 400 <= resp.status_code < 500:
        assert "error" in resp.json(), resp.text[:500]


POSTS = ["/api/requests", "/api/jobs"]


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------


def test_openapi_describes_the_post_bodies(spec: dict[str, Any]) -> None:
    for path in POSTS:
        assert body_schema(spec, path)["type"] == "object"


@settings(FUZZ)
@given(data=st.data())
def test_schema_valid_bodies_are_served_and_readable(
    http: httpx.Client, spec: dict[str, Any], data: st.DataObject
) -> None:
    path = data.draw(st.sampled_from(POSTS))
    body = data.draw(from_schema(body_schema(spec, path)))
    resp = http.post(path, json=body)
    assert resp.status_code in (200, 202), (body, resp.status_code, resp.text[:500])
    # what was accepted can be read back
    got = http.get(f"{path}/{quote(resp.json()['id'], safe='')}")
    assert got.status_code == 200, (body, got.status_code, got.text[:500])


@settings(FUZZ)
@given(data=st.data())
def test_broken_bodies_never_get_5xx(
    http: httpx.Client, spec: dict[str, Any], data: st.DataObject
) -> None:
    path = data.draw(st.sampled_from(POSTS))
    body = data.draw(
        broken(body_schema(spec, path)).flatmap(encoded)
        | json_values.flatmap(encoded)
        | st.binary(max_size=200)
        | st.binary(min_size=MAX_BODY - 10, max_size=MAX_BODY + 10)
        | st.sampled_from([b"NaN", b'{"payload": {"x": NaN}}', b'{"payload": {"x": 1e999}}'])
    )
    headers = {}
    content_type = data.draw(st.none() | CONTENT_TYPES)
    if content_type is not None:
        headers["Content-Type"] = content_type
    resp = http.post(path, content=body, headers=headers)
    check(resp)
    if resp.status_code < 300:
        got = http.get(f"{path}/{quote(resp.json()['id'], safe='')}")
        assert got.status_code == 200, (body, got.status_code, got.text[:500])


@settings(FUZZ)
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]),
    prefix=st.sampled_from(["/api/requests/", "/api/jobs/", "/api/", "/", "/healthz/", "/x/"]),
    tail=st.text(max_size=150),
)
def test_any_path_and_method_is_below_500(
    http: httpx.Client, method: str, prefix: str, tail: str
) -> None:
    resp = http.request(method, prefix + quote(tail, safe="/"), content=b"{}")
    assert resp.status_code < 500, (method, prefix, tail, resp.status_code, resp.text[:300])


def raw_request(url: str, head: bytes, body: bytes) -> int:
    """Send bytes as they are (httpx would fix a lying Content-Length); returns the status, or 0
    when the server closed the connection without an answer."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=20) as s:
        s.sendall(head + b"\r\n" + body)
        s.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    if not answer:
        return 0  # closed without an answer (the body ended before its Content-Length)
    return int(answer.split(b" ", 2)[1])


@settings(FUZZ, max_examples=60)
@given(
    path=st.sampled_from(POSTS),
    length=st.sampled_from([b"-1", b"abc", b"1e3", b"99999999999999999999", b"0", b"2", b" 5"])
    | st.integers(min_value=0, max_value=40).map(lambda n: str(n).encode()),
    body=st.sampled_from([b"{}", b'{"payload": {}}', b"", b"[1]"]),
)
def test_lying_content_length_is_4xx(worker: str, path: str, length: bytes, body: bytes) -> None:
    head = (
        (
            f"POST {path} HTTP/1.1\r\nHost: w\r\nConnection: close\r\n"
            "Content-Type: application/json\r\n"
        ).encode()
        + b"Content-Length: "
        + length
        + b"\r\n"
    )
    status = raw_request(worker, head, body)
    assert status < 500, (path, length, body, status)


def test_regressions(http: httpx.Client) -> None:
    """Inputs the fuzzer found: each was accepted or answered 500 before the fix."""
    # NaN / Infinity were stored, then GET of the request answered 500 (strict JSON responses).
    for raw in (
        b'{"payload": {"x": NaN}}',
        b'{"payload": {"x": 1e999}}',
        b'{"payload": {"x": -Infinity}}',
    ):
        resp = http.post("/api/requests", content=raw, headers={"Content-Type": "application/json"})
        assert resp.status_code == 400, resp.text
    # a trailing newline passed the id pattern (Python's `$`)
    resp = http.post("/api/jobs", json={"id": "job\n"})
    assert resp.status_code == 422, resp.text
    # a non-JSON Content-Type is refused
    resp = http.post("/api/jobs", content=b"{}", headers={"Content-Type": "text/plain"})
    assert resp.status_code == 415, resp.text


def test_worker_answered_no_5xx_at_all(http: httpx.Client) -> None:
    """The worker's own request counter (by status) has no 5xx, including requests whose client
    went away before an answer; and the worker is still healthy."""
    assert http.get("/healthz").status_code == 200
    metrics = http.get("/metrics").text
    counted = [
        line
        for line in metrics.splitlines()
        if line.startswith("clusterkit_http_requests_total{") and not line.endswith(" 0.0")
    ]
    assert counted, "no requests were counted"
    assert not [line for line in counted if 'status="5' in line], counted
