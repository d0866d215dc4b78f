"""The front ends of the deployed lab: nginx (on the LBs' virtual address, else 127.0.0.1:8080
and 8443), HAProxy behind it balancing over every worker of every app host, its stats on port
8404 there, and configs that a bad value cannot break. Real HTTP from the controller plus
Testinfra on each lb host."""

from __future__ import annotations

import collections
import hashlib
import subprocess
import time

import pytest
import requests

from tests.conftest import (
    ROOT,
    address,
    front_end_url,
    group_hosts,
    hostvar,
    inventory_name,
    secret,
    setting,
    stats_base_url,
    worker_names,
)

testinfra_hosts = ["ansible://lb"]

NGINX = front_end_url()
NGINX_TLS = front_end_url("https")
STATS = stats_base_url()
BACKEND = "app_workers"


def stats_csv(auth) -> dict[str, str]:
    r = requests.get(f"{STATS}/;csv", auth=auth, timeout=10)
    r.raise_for_status()
    rows = [line.split(",") for line in r.text.splitlines() if line and not line.startswith("#")]
    return {row[1]: row[17] for row in rows if row[0] == BACKEND and row[1] != "BACKEND"}


@pytest.fixture(scope="module")
def stats_auth():
    return ("admin", secret("haproxy_stats_password"))


@pytest.mark.smoke
def test_static_page_answers_200() -> None:
    r = requests.get(f"{NGINX}/", timeout=10)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/html")
    assert "clusterkit" in r.text
    assert len(r.headers["X-Request-Id"]) == 32


@pytest.mark.serial
def test_100_requests_reach_every_worker_evenly() -> None:
    counts: collections.Counter[str] = collections.Counter()
    with requests.Session() as s:
        for i in range(100):
            r = s.post(f"{NGINX}/api/requests", json={"payload": {"n": i}}, timeout=30)
            assert r.status_code == 200, r.text
            assert r.json()["worker_id"] == r.headers["X-Worker-Id"]
            counts[r.headers["X-Worker-Id"]] += 1
    assert set(counts) == worker_names()
    assert max(counts.values()) / min(counts.values()) <= 1.5, counts


def test_request_id_reaches_the_worker() -> None:
    r = requests.post(f"{NGINX}/api/requests", json={"payload": {}}, timeout=30)
    assert r.status_code == 200
    stored = requests.get(f"{NGINX}/api/requests/{r.json()['id']}", timeout=30)
    assert stored.status_code == 200
    assert len(r.headers["X-Request-Id"]) == 32


@pytest.mark.smoke
def test_stats_list_every_worker_up(stats_auth) -> None:
    assert stats_csv(stats_auth) == {w: "UP" for w in worker_names()}


@pytest.mark.parametrize("auth", [None, ("admin", "wrong"), ("nobody", "x")])
@pytest.mark.parametrize("path", ["/", "/;csv", "/metrics"])
def test_stats_without_valid_credentials_get_401(auth, path) -> None:
    r = requests.get(f"{STATS}{path}", auth=auth, timeout=10)
    assert r.status_code == 401
    assert "Basic" in r.headers.get("WWW-Authenticate", "")


def test_prometheus_endpoint(stats_auth) -> None:
    r = requests.get(f"{STATS}/metrics", auth=stats_auth, timeout=10)
    assert r.status_code == 200
    for worker in worker_names():
        assert (
            f'haproxy_server_status{{proxy="{BACKEND}",server="{worker}",state="UP"}} 1' in r.text
        )


def test_stub_status_is_not_public() -> None:
    assert requests.get(f"{NGINX}/nginx_status", timeout=10).status_code == 403


@pytest.mark.smoke
def test_https_with_the_hosts_certificate(host, tmp_path) -> None:
    lb = inventory_name(host)
    if not setting(lb, "nginx_tls_enabled"):
        pytest.skip("nginx_tls_enabled is off for this host")
    cert = tmp_path / "lb.crt"
    cert.write_text(host.file("/etc/nginx/tls/clusterkit.crt").content_string)
    r = requests.post(
        f"{NGINX_TLS}/api/requests", json={"payload": {}}, verify=str(cert), timeout=30
    )
    assert r.status_code == 200
    assert r.headers["X-Worker-Id"] in worker_names()


def test_every_lb_host_serves_on_its_private_address(host) -> None:
    lb = inventory_name(host)
    r = requests.post(f"http://{address(lb)}/api/requests", json={"payload": {}}, timeout=30)
    assert r.status_code == 200
    assert r.headers["X-Worker-Id"] in worker_names()


def test_runtime_api_only_for_root_and_haproxy(host) -> None:
    sock = host.file("/run/haproxy/admin.sock")
    assert (sock.user, sock.group, sock.mode) == ("root", "haproxy", 0o660)
    # The lab connects as root.
    assert "Pid:" in host.check_output(
        "echo 'show info' | socat -t 2 stdio UNIX-CONNECT:/run/haproxy/admin.sock"
    )
    for path in ("/run/haproxy/admin.sock", "/run/haproxy-master.sock"):
        denied = host.run(
            f"su -s /bin/sh nobody -c 'echo show info | socat -t 2 stdio UNIX-CONNECT:{path}'"
        )
        assert denied.rc != 0
        assert "Permission denied" in denied.stderr


def snapshot(host, unit: str, path: str) -> tuple[str, str]:
    pid = host.check_output(f"systemctl show --property MainPID --value {unit}")
    digest = hashlib.sha256(host.file(path).content).hexdigest()
    return pid, digest


@pytest.mark.serial
@pytest.mark.parametrize(
    ("tag", "extra", "unit", "path", "task"),
    [
        (
            "nginx",
            "nginx_extra_http_config=bogus_directive on;",
            "nginx",
            "/etc/nginx/nginx.conf",
            "Write the nginx configuration",
        ),
        (
            "haproxy",
            "haproxy_extra_global=bogus",
            "haproxy",
            "/etc/haproxy/haproxy.cfg",
            "Write the HAProxy configuration",
        ),
    ],
)
def test_bad_value_fails_at_validation_and_old_config_keeps_serving(
    host, tag, extra, unit, path, task
):
    before = snapshot(host, unit, path)
    run = subprocess.run(
        ["ansible-playbook", "playbooks/frontends.yml", "--tags", tag, "-e", extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode != 0
    assert f"TASK [{tag}: {task}]" in run.stdout or task in run.stdout
    assert "failed to validate" in run.stdout
    assert "bogus" in run.stdout
    # Same process, same file on disk, and still serving.
    assert snapshot(host, unit, path) == before
    for _ in range(5):
        assert requests.get(f"{NGINX}/", timeout=10).status_code == 200
        assert (
            requests.post(f"{NGINX}/api/requests", json={"payload": {}}, timeout=30).status_code
            == 200
        )
        time.sleep(0.2)


def test_lab_publishes_the_ports_on_loopback_only() -> None:
    ports = hostvar(group_hosts("lb")[0], "lab_published_ports")
    assert {p.split(":")[0] for p in ports} == {"127.0.0.1"}
