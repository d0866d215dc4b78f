"""Verify the haproxy role on a real systemd container with three stand-in workers:
what HAProxy does (balancing, limits, health checks, drain, reloads, access control)."""

import json
import os
import re
import time
from pathlib import Path

import pytest

testinfra_hosts = ["ansible://lb"]

WORKERS = ["haproxy-1-8180", "haproxy-1-8181", "haproxy-1-8182"]
BACKEND = "app_workers"
SOCKET = "/run/haproxy/admin.sock"

# Closed-loop client inside the container: threads post to the API for a while over
# kept-alive connections and print counts of answers by status and worker.
LOAD = r"""
import collections, http.client, json, sys, threading, time
seconds, threads, host, port = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
lock = threading.Lock()
status = collections.Counter(); workers = collections.Counter(); errors = []
def run():
    conn = None
    end = time.time() + seconds
    while time.time() < end:
        try:
            if conn is None:
                conn = http.client.HTTPConnection(host, port, timeout=30)
            conn.request("POST", "/api/requests", body=b'{"payload": {}}',
                         headers={"Content-Type": "application/json"})
            r = conn.getresponse(); r.read()
            with lock:
                status[r.status] += 1; workers[r.getheader("X-Worker-Id")] += 1
            if r.getheader("Connection", "").lower() == "close":
                conn.close(); conn = None
        except Exception as exc:
            with lock:
                errors.append(repr(exc))
            conn = None
ts = [threading.Thread(target=run) for _ in range(threads)]
[t.start() for t in ts]; [t.join() for t in ts]
print(json.dumps({"status": status, "workers": workers, "errors": errors}))
"""


@pytest.fixture(scope="module")
def password():
    path = (
        Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"])
        / "inventory"
        / ".secrets"
        / "haproxy_stats_password"
    )
    return path.read_text().split(" salt=")[0].strip()


@pytest.fixture(scope="module")
def address(host):
    route = host.check_output("ip -4 route get 1.1.1.1")
    return re.search(r"\bsrc (\S+)", route).group(1)


def runtime(host, command):
    return host.check_output(f"echo {command!r} | socat -t 2 stdio UNIX-CONNECT:{SOCKET}")


def server_states(host, password):
    """{server: status} from the stats page's CSV (read with the credentials)."""
    csv = host.check_output(f"curl -fsS -u admin:{password} 'http://127.0.0.1:8404/;csv'")
    lines = [line.split(",") for line in csv.splitlines() if line and not line.startswith("#")]
    return {cols[1]: cols[17] for cols in lines if cols[0] == BACKEND and cols[1] != "BACKEND"}


def wait_state(host, password, server, wanted, timeout=10.0):
    start = time.time()
    while time.time() - start < timeout:
        if server_states(host, password).get(server, "").startswith(wanted):
            return time.time() - start
        time.sleep(0.2)
    pytest.fail(f"{server} not {wanted} within {timeout} s: {server_states(host, password)}")


def post(host, n):
    """Worker ids of n sequential POST /api/requests through HAProxy."""
    out = host.check_output(
        f"for i in $(seq 1 {n}); do curl -fsS -o /dev/null -D - -X POST -d '{{}}' "
        "http://127.0.0.1:8000/api/requests | tr -d '\\r'"
        " | sed -n 's/^[Xx]-[Ww]orker-[Ii]d: //p'; done"
    )
    return out.split()


def load(host, seconds, threads, target="127.0.0.1 8000"):
    host.check_output(f"cat > /tmp/load.py <<'PY'\n{LOAD}\nPY")
    return json.loads(host.check_output(f"python3 /tmp/load.py {seconds} {threads} {target}"))


def test_service_runs_in_master_worker_mode(host):
    service = host.service("haproxy")
    assert service.is_running
    assert service.is_enabled
    master = host.check_output("systemctl show --property MainPID --value haproxy")
    assert " -Ws " in host.file(f"/proc/{master}/cmdline").content_string.replace("\0", " ")
    children = host.check_output(f"pgrep -P {master} haproxy").split()
    assert len(children) >= 1


def test_listens_on_private_address_and_loopback_only(host, address):
    lines = host.check_output("ss -Hltn").splitlines()
    sockets = sorted(
        line.split()[3] for line in lines if line.split()[3].endswith((":8000", ":8404"))
    )
    assert sockets == sorted(f"{a}:{p}" for a in (address, "127.0.0.1") for p in (8000, 8404))


def test_backend_lists_every_worker_up(host, password):
    assert server_states(host, password) == {w: "UP" for w in WORKERS}


@pytest.mark.parametrize("credentials", ["", "-u admin:wrong", "-u nobody:nothing"])
@pytest.mark.parametrize("path", ["/", "/;csv", "/metrics"])
def test_stats_and_metrics_refuse_without_credentials(host, address, credentials, path):
    for where in ("127.0.0.1", address):
        code = host.check_output(
            f"curl -s -o /dev/null -w '%{{http_code}}' {credentials} 'http://{where}:8404{path}'"
        )
        assert code == "401"


def test_prometheus_endpoint(host, password):
    metrics = host.check_output(f"curl -fsS -u admin:{password} http://127.0.0.1:8404/metrics")
    for worker in WORKERS:
        assert re.search(
            rf'haproxy_server_status{{proxy="{BACKEND}",server="{worker}",state="UP"}} 1', metrics
        )


def test_password_never_reaches_the_host(host, password):
    config = host.file("/etc/haproxy/haproxy.cfg")
    assert password not in config.content_string
    assert re.search(r"^\s*user admin password \$6\$", config.content_string, re.M)
    assert (config.user, config.group, config.mode) == ("root", "haproxy", 0o640)


def test_runtime_api_is_for_root_and_group_haproxy_only(host):
    sock = host.file(SOCKET)
    assert sock.is_socket
    assert (sock.user, sock.group, sock.mode) == ("root", "haproxy", 0o660)
    assert "Pid:" in runtime(host, "show info")
    for socket_path in (SOCKET, "/run/haproxy-master.sock"):
        denied = host.run(
            "su -s /bin/sh nobody -c "
            f"'echo show info | socat -t 2 stdio UNIX-CONNECT:{socket_path}'"
        )
        assert denied.rc != 0
        assert "Permission denied" in denied.stderr


def test_requests_spread_evenly(host):
    ids = post(host, 30)
    assert {w: ids.count(w) for w in WORKERS} == {w: 10 for w in WORKERS}


def test_no_worker_gets_more_than_one_request_at_a_time(host):
    result = load(host, 4, 12)
    assert result["errors"] == []
    assert set(result["status"]) == {"200"}
    # 3 workers x 66 ms: at most about 45 requests/s whatever the number of clients.
    assert sum(result["status"].values()) <= 4 * 50
    # maxconn 1 queues the rest in HAProxy. HAProxy itself may let one more request through
    # for an instant under a burst (haproxy/haproxy#2744, "backend session limit not
    # respected", a bug confirmed upstream), so a rare overlap of two is tolerated; a worker
    # flooded past its one slot (no maxconn: most requests overlap) is not.
    for port in (8180, 8181, 8182):
        stats = json.loads(
            host.check_output(f"curl -fsS http://$(hostname -i | cut -d' ' -f1):{port}/stub/stats")
        )
        assert stats["max_in_service"] <= 2, stats
        assert stats["overlapped"] <= max(1, stats["requests"] // 50), stats


def test_failing_health_check_takes_a_worker_out_and_back(host, password):
    host.check_output("touch /run/stub-backend/8182.down")
    try:
        took = wait_state(host, password, "haproxy-1-8182", "DOWN")
        assert took < 3.5
        assert "haproxy-1-8182" not in post(host, 12)
    finally:
        host.check_output("rm -f /run/stub-backend/8182.down")
    wait_state(host, password, "haproxy-1-8182", "UP")


def test_dead_worker_is_down_within_three_seconds(host, password):
    host.check_output(
        "systemctl kill --signal=SIGKILL stub-worker@8181.service"
        " && systemctl stop stub-worker@8181.service"
    )
    try:
        took = wait_state(host, password, "haproxy-1-8181", "DOWN")
        assert took < 3.5
        ids = post(host, 12)
        assert "haproxy-1-8181" not in ids
        assert len(ids) == 12
    finally:
        host.check_output("systemctl start stub-worker@8181.service")
    wait_state(host, password, "haproxy-1-8181", "UP")


def test_drained_worker_gets_no_new_requests(host, password):
    runtime(host, f"set server {BACKEND}/haproxy-1-8180 state drain")
    try:
        assert server_states(host, password)["haproxy-1-8180"] == "DRAIN"
        ids = post(host, 12)
        assert "haproxy-1-8180" not in ids
        assert len(ids) == 12
    finally:
        runtime(host, f"set server {BACKEND}/haproxy-1-8180 state ready")
    assert server_states(host, password)["haproxy-1-8180"] == "UP"


def test_reload_is_seamless_and_keeps_server_states(host, password):
    master = host.check_output("systemctl show --property MainPID --value haproxy")
    runtime(host, f"set server {BACKEND}/haproxy-1-8182 state maint")
    host.check_output(
        f"echo 'show servers state' | socat stdio UNIX-CONNECT:{SOCKET}"
        " > /var/lib/haproxy/server-state"
    )
    host.check_output(
        "cat > /tmp/reload.sh <<'SH'\n"
        "sleep 1; systemctl reload haproxy; sleep 1.5; systemctl reload haproxy\nSH"
    )
    host.check_output("(sh /tmp/reload.sh > /tmp/reload.log 2>&1 &)")
    try:
        result = load(host, 5, 6)
        assert result["errors"] == []
        assert set(result["status"]) == {"200"}
        assert "haproxy-1-8182" not in result["workers"]
        assert host.check_output("systemctl show --property MainPID --value haproxy") == master
        # The new process took over the maintenance state from the state file.
        assert server_states(host, password)["haproxy-1-8182"] == "MAINT"
    finally:
        runtime(host, f"set server {BACKEND}/haproxy-1-8182 state ready")
    wait_state(host, password, "haproxy-1-8182", "UP")


def test_config_check_rejects_a_bad_file(host):
    assert host.run("haproxy -c -q -f /etc/haproxy/haproxy.cfg").rc == 0
    host.check_output(
        "sed 's/balance leastconn/balance bogus/' /etc/haproxy/haproxy.cfg > /tmp/bad.cfg"
    )
    assert host.run("haproxy -c -q -f /tmp/bad.cfg").rc != 0
