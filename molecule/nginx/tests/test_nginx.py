"""Verify the nginx role on a whole load balancer host (nginx -> HAProxy -> two stand-in
workers): what a client sees, what the workers receive, and how nginx talks to HAProxy."""

import base64
import json
import re

import pytest

testinfra_hosts = ["ansible://lb"]

CERT = "/etc/nginx/tls/clusterkit.crt"

# Closed-loop client: threads post through nginx over kept-alive connections for a while.
LOAD = r"""
import collections, http.client, json, sys, threading, time
seconds, threads = float(sys.argv[1]), int(sys.argv[2])
lock = threading.Lock(); status = collections.Counter(); errors = []
def run():
    conn = None; end = time.time() + seconds
    while time.time() < end:
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", 80, timeout=30)
            conn.request("POST", "/api/requests", body=b"{}",
                         headers={"Content-Type": "application/json"})
            r = conn.getresponse(); r.read()
            with lock: status[r.status] += 1
        except Exception as exc:
            with lock: errors.append(repr(exc))
            conn = None
ts = [threading.Thread(target=run) for _ in range(threads)]
[t.start() for t in ts]; [t.join() for t in ts]
print(json.dumps({"status": status, "errors": errors}))
"""


@pytest.fixture(scope="module")
def address(host):
    route = host.check_output("ip -4 route get 1.1.1.1")
    return re.search(r"\bsrc (\S+)", route).group(1)


def curl(host, args):
    """(status, headers, body) of one curl call inside the container."""
    out = host.check_output(
        f"curl -sS -D /tmp/headers -o /tmp/body {args};"
        " cat /tmp/headers; echo; base64 -w0 /tmp/body"
    )
    head, _, body = out.rpartition("\n")
    lines = [line.strip() for line in head.splitlines() if line.strip()]
    status = int(lines[0].split()[1])
    headers = {
        k.strip().lower(): v.strip()
        for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)
    }
    return status, headers, base64.b64decode(body)


def haproxy_frontend(host):
    """Counters of HAProxy's API frontend (sessions, requests) from the runtime API."""
    csv = host.check_output(
        "echo 'show stat' | socat -t 2 stdio UNIX-CONNECT:/run/haproxy/admin.sock"
    )
    lines = csv.splitlines()
    names = lines[0].lstrip("# ").split(",")
    for line in lines[1:]:
        row = dict(zip(names, line.split(","), strict=False))
        if row.get("pxname") == "api" and row.get("svname") == "FRONTEND":
            return int(row["stot"]), int(row["req_tot"])
    pytest.fail("no api frontend in show stat")


def test_service_running_and_enabled(host):
    service = host.service("nginx")
    assert service.is_running
    assert service.is_enabled


def test_one_config_file_and_no_default_site(host):
    assert not host.file("/etc/nginx/sites-enabled/default").exists
    dump = host.check_output("nginx -T 2>/dev/null")
    files = re.findall(r"^# configuration file (\S+):$", dump, re.M)
    assert files[0] == "/etc/nginx/nginx.conf"
    assert all(
        f == "/etc/nginx/mime.types" or f.startswith("/etc/nginx/modules-enabled/")
        for f in files[1:]
    )


def test_listens_on_http_and_https(host):
    sockets = {line.split()[3] for line in host.check_output("ss -Hltn").splitlines()}
    assert {"0.0.0.0:80", "0.0.0.0:443"} <= sockets


def test_static_status_page(host):
    status, headers, body = curl(host, "http://127.0.0.1/")
    assert status == 200
    assert headers["content-type"].startswith("text/html")
    assert b"<h1>clusterkit</h1>" in body
    assert re.fullmatch(r"[0-9a-f]{32}", headers["x-request-id"])


def test_gzip(host):
    status, headers, body = curl(host, "-H 'Accept-Encoding: gzip' http://127.0.0.1/")
    assert headers.get("content-encoding") == "gzip"
    assert body[:2] == b"\x1f\x8b"
    status, headers, body = curl(host, "-H 'Accept-Encoding: gzip' http://127.0.0.1/api/echo")
    assert status == 200
    assert headers.get("content-encoding") == "gzip"


def test_api_reaches_a_worker_with_request_id_and_forwarded_headers(host):
    status, headers, body = curl(
        host, "-X POST -H 'Content-Type: application/json' -d '{}' http://127.0.0.1/api/requests"
    )
    assert status == 200
    seen = json.loads(body)
    assert headers["x-worker-id"] == seen["worker_id"]
    assert seen["headers"]["x-request-id"] == headers["x-request-id"]
    assert seen["headers"]["x-forwarded-for"] == "127.0.0.1"
    assert seen["headers"]["x-forwarded-proto"] == "http"
    assert seen["headers"]["x-forwarded-host"] == "127.0.0.1"
    # Upstream requests are HTTP/1.1 without "Connection: close" (keepalive).
    assert seen["headers"].get("connection", "").lower() != "close"


def test_requests_spread_over_both_workers(host):
    ids = host.check_output(
        "for i in $(seq 1 20); do curl -fsS -o /dev/null -D - -X POST -d '{}' http://127.0.0.1/api/requests"
        " | tr -d '\\r' | sed -n 's/^[Xx]-[Ww]orker-[Ii]d: //p'; done"
    ).split()
    assert sorted(set(ids)) == ["nginx-1-8180", "nginx-1-8181"]
    assert ids.count("nginx-1-8180") == 10


def test_upstream_connections_are_kept_alive(host):
    sessions_before, requests_before = haproxy_frontend(host)
    host.check_output(
        "for i in $(seq 1 40); do curl -fsS -o /dev/null http://127.0.0.1/api/echo; done"
    )
    sessions_after, requests_after = haproxy_frontend(host)
    assert requests_after - requests_before == 40
    # One connection per nginx worker process at most, however many requests.
    workers = len(host.check_output("pgrep -f 'nginx: worker process'").split())
    assert sessions_after - sessions_before <= workers


def test_https_with_the_self_signed_certificate(host, address):
    status, headers, body = curl(host, f"--cacert {CERT} https://127.0.0.1/")
    assert status == 200
    status, headers, body = curl(
        host, f"--cacert {CERT} --resolve nginx-1:443:{address} https://nginx-1/api/echo"
    )
    assert status == 200
    assert json.loads(body)["headers"]["x-forwarded-proto"] == "https"
    key = host.file("/etc/nginx/tls/clusterkit.key")
    assert (key.user, key.mode) == ("root", 0o600)


def test_stub_status_from_loopback_only(host, address):
    status, _, body = curl(host, "http://127.0.0.1/nginx_status")
    assert status == 200
    assert b"Active connections" in body
    status, _, _ = curl(host, f"http://{address}/nginx_status")
    assert status == 403


def test_installed_config_passes_nginx_t(host):
    assert host.run("nginx -t -q").rc == 0


def test_haproxy_reloads_do_not_fail_requests_through_nginx(host):
    host.check_output(f"cat > /tmp/load.py <<'PY'\n{LOAD}\nPY")
    host.check_output(
        "cat > /tmp/reload.sh <<'SH'\n"
        "sleep 1; systemctl reload haproxy; sleep 1.5; systemctl reload haproxy\nSH"
    )
    host.check_output("(sh /tmp/reload.sh > /tmp/reload.log 2>&1 &)")
    result = json.loads(host.check_output("python3 /tmp/load.py 5 6"))
    assert result["errors"] == []
    assert set(result["status"]) == {"200"}


def test_nginx_reload_keeps_the_master(host):
    before = host.check_output("systemctl show --property MainPID --value nginx")
    host.check_output("systemctl reload nginx")
    assert host.check_output("systemctl show --property MainPID --value nginx") == before
