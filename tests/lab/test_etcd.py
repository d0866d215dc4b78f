"""The deployed etcd cluster, from the controller: health of every member over HTTP, the
member list, client authentication through the v3 JSON gateway (the way the app talks to
etcd), and a member restart that keeps the cluster healthy and writable."""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.error
import urllib.request

import pytest

from tests.conftest import address, group_hosts, secret, testinfra_host

testinfra_hosts = ["ansible://etcd"]

MEMBERS = group_hosts("etcd")


def url(host: str, path: str) -> str:
    return f"http://{address(host)}:2379{path}"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def post(host: str, path: str, body: dict, token: str | None = None) -> tuple[int, dict]:
    """POST to the v3 JSON gateway; returns (HTTP status, decoded body)."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = token
    request = urllib.request.Request(url(host, path), json.dumps(body).encode(), headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def gateway_error(body: dict) -> str:
    """The error text of a gateway response: etcd 3.4's gateway (bookworm) sends `error` (and
    `message`), 3.5's (trixie) only `message`."""
    return body.get("error") or body.get("message") or ""


def healthy(host: str) -> bool:
    try:
        with urllib.request.urlopen(url(host, "/health"), timeout=5) as resp:
            return json.load(resp).get("health") == "true"
    except (OSError, ValueError):
        return False


def wait_healthy(host: str, timeout: float = 60) -> bool:
    # etcd's /health makes a quorum read with a 1 s deadline: on a busy machine one check can
    # time out, so a member counts as healthy when it says so within the timeout.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if healthy(host):
            return True
        time.sleep(1)
    return False


def token(host: str, user: str, password: str) -> str:
    status, body = post(host, "/v3/auth/authenticate", {"name": user, "password": password})
    assert status == 200, body
    return body["token"]


@pytest.fixture(scope="module")
def app_token() -> str:
    return token(MEMBERS[0], "clusterkit", secret("etcd_app_password"))


def test_service_enabled_and_running(host):
    service = host.service("etcd")
    assert service.is_enabled
    assert service.is_running
    assert not host.file("/var/lib/etcd/default").exists


@pytest.mark.smoke
@pytest.mark.parametrize("member", MEMBERS)
def test_member_healthy_from_the_controller(member):
    assert wait_healthy(member), f"{member} ({address(member)}) does not report healthy"


@pytest.mark.smoke
def test_member_list_has_every_host():
    status, body = post(MEMBERS[0], "/v3/cluster/member/list", {})
    assert status == 200, body
    members = {m["name"]: m for m in body["members"]}
    assert sorted(members) == sorted(MEMBERS)
    for name, member in members.items():
        assert member["clientURLs"] == [url(name, "")]
        assert member["peerURLs"] == [f"http://{address(name)}:2380"]


@pytest.mark.smoke
def test_anonymous_put_refused():
    body = {"key": b64("/clusterkit/anon"), "value": b64("x")}
    status, body = post(MEMBERS[0], "/v3/kv/put", body)
    assert status != 200
    assert "user name is empty" in gateway_error(body)


def test_wrong_password_refused():
    login = {"name": "clusterkit", "password": "not-the-password"}
    status, body = post(MEMBERS[0], "/v3/auth/authenticate", login)
    assert status != 200
    assert "authentication failed" in gateway_error(body)


@pytest.mark.smoke
def test_app_user_writes_under_its_prefix(app_token):
    key = f"/clusterkit/lab-test/{time.time_ns()}"
    status, body = post(MEMBERS[0], "/v3/kv/put", {"key": b64(key), "value": b64("ok")}, app_token)
    assert status == 200, body
    # Read it back through another member: the write went through the cluster.
    other = token(MEMBERS[-1], "clusterkit", secret("etcd_app_password"))
    status, body = post(MEMBERS[-1], "/v3/kv/range", {"key": b64(key)}, other)
    assert status == 200, body
    assert base64.b64decode(body["kvs"][0]["value"]) == b"ok"


@pytest.mark.parametrize("key", ["/elsewhere", "/clusterkit", "/clusterkitX/key"])
def test_app_user_refused_outside_its_prefix(app_token, key):
    status, body = post(MEMBERS[0], "/v3/kv/put", {"key": b64(key), "value": b64("no")}, app_token)
    assert status != 200
    assert "permission denied" in gateway_error(body)


def test_root_user_manages_the_cluster():
    root = token(MEMBERS[0], "root", secret("etcd_root_password"))
    status, body = post(MEMBERS[0], "/v3/auth/user/list", {}, root)
    assert status == 200, body
    assert {"root", "clusterkit"} <= set(body["users"])


def leader_and_followers() -> tuple[str, list[str]]:
    ids = {}
    leader = None
    for member in MEMBERS:
        status, body = post(member, "/v3/maintenance/status", {})
        assert status == 200, body
        ids[member] = body["header"]["member_id"]
        leader = body["leader"]
    followers = [m for m in MEMBERS if ids[m] != leader]
    return next(m for m in MEMBERS if ids[m] == leader), followers


@pytest.mark.serial
def test_restart_of_one_member_keeps_the_cluster_healthy():
    leader, followers = leader_and_followers()
    victim = followers[-1]
    writer = leader
    token_ = token(writer, "clusterkit", secret("etcd_app_password"))
    failures: list[str] = []
    writes = 0
    stop = threading.Event()

    def keep_writing() -> None:
        nonlocal writes
        while not stop.is_set():
            key = b64(f"/clusterkit/lab-test/restart/{writes}")
            status, body = post(writer, "/v3/kv/put", {"key": key, "value": b64("v")}, token_)
            if status != 200:
                failures.append(f"{status} {body}")
            writes += 1
            time.sleep(0.2)

    thread = threading.Thread(target=keep_writing, daemon=True)
    thread.start()
    try:
        testinfra_host(victim).check_output("systemctl restart etcd")
        assert wait_healthy(victim), f"{victim} not healthy after its restart"
        for member in MEMBERS:
            assert wait_healthy(member), f"{member} not healthy after {victim} restarted"
    finally:
        stop.set()
        thread.join(30)
    assert writes > 0
    assert not failures, f"writes failed while {victim} restarted: {failures[:3]}"
