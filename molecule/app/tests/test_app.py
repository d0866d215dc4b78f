"""Verify the app role on one systemd container that also runs Redis, MongoDB and etcd:
the master and two workers serve, requests and jobs go through the real stack."""

from __future__ import annotations

import json
import time
import uuid

import pytest

testinfra_hosts = ["ansible://all"]

WORKER_PORTS = [8180, 8181]
MASTER_HEALTH_PORT = 7002

# Runs on the host: one HTTP request, prints {"status", "headers", "body"} as JSON.
HTTP = r"""
import json, sys, urllib.error, urllib.request
method, url, body = sys.argv[1], sys.argv[2], sys.argv[3]
req = urllib.request.Request(url, method=method, data=body.encode() if body else None,
                             headers={"Content-Type": "application/json"})
try:
    with urllib.request.urlopen(req, timeout=30) as resp:
        status, headers, data = resp.status, dict(resp.headers), resp.read()
except urllib.error.HTTPError as exc:
    status, headers, data = exc.code, dict(exc.headers), exc.read()
print(json.dumps({"status": status, "headers": headers, "body": data.decode()}))
"""


@pytest.fixture(scope="module")
def address(host):
    """Where master and workers listen: BIND_ADDRESS from the environment files."""
    env = host.check_output("grep -h '^BIND_ADDRESS=' /etc/clusterkit/worker.env")
    return env.split("=", 1)[1].strip('"')


def http(host, method, url, body=None):
    cmd = host.run("python3 -c %s %s %s %s", HTTP, method, url, json.dumps(body) if body else "")
    assert cmd.rc == 0, cmd.stderr
    result = json.loads(cmd.stdout)
    headers = {k.lower(): v for k, v in result["headers"].items()}
    return result["status"], headers, result["body"]


def test_master_and_two_workers_run_as_the_app_user(host):
    units = ["clusterkit-master.service"] + [f"clusterkit-worker@{p}.service" for p in WORKER_PORTS]
    for unit in [*units, "clusterkit-app.target"]:
        service = host.service(unit)
        assert service.is_running, unit
        assert service.is_enabled, unit
    for unit in units:
        pid = host.check_output(f"systemctl show --value --property MainPID {unit}")
        assert host.check_output(f"ps -o user= -p {pid}").strip() == "clusterkit", unit


def test_no_surplus_worker_instances(host):
    listed = host.check_output(
        "systemctl list-units --all --plain --no-legend 'clusterkit-worker@*.service'"
    )
    names = sorted(line.split()[0] for line in listed.splitlines() if line.strip())
    assert names == [f"clusterkit-worker@{p}.service" for p in WORKER_PORTS]


def test_environment_files_are_private_and_units_hold_no_secret(host):
    for name in ["app.env", "master.env", "worker.env"]:
        env = host.file(f"/etc/clusterkit/{name}")
        assert env.mode == 0o640, name
        assert env.user == "root", name
        assert env.group == "clusterkit", name
    token = host.check_output("sed -n 's/^GRPC_TOKEN=\"\\(.*\\)\"$/\\1/p' /etc/clusterkit/app.env")
    assert len(token) >= 16
    for unit in ["clusterkit-master.service", "clusterkit-worker@.service"]:
        assert token not in host.file(f"/etc/systemd/system/{unit}").content_string


def test_master_and_workers_are_healthy(host, address):
    status, _, body = http(host, "GET", f"http://{address}:{MASTER_HEALTH_PORT}/healthz")
    assert status == 200, body
    for port in WORKER_PORTS:
        status, _, body = http(host, "GET", f"http://{address}:{port}/healthz")
        assert status == 200, body
        assert json.loads(body)["status"] == "ok"


def test_post_request_on_every_worker(host, address):
    seen = set()
    for port in WORKER_PORTS:
        status, headers, body = http(
            host, "POST", f"http://{address}:{port}/api/requests", {"payload": {"n": port}}
        )
        assert status == 200, body
        answer = json.loads(body)
        assert headers["x-worker-id"] == answer["worker_id"]
        seen.add(answer["worker_id"])
        status, _, stored = http(
            host, "GET", f"http://{address}:{port}/api/requests/{answer['id']}"
        )
        assert status == 200, stored
    assert len(seen) == len(WORKER_PORTS)


def test_a_submitted_job_is_applied(host, address):
    job_id = f"molecule-{uuid.uuid4().hex[:12]}"
    base = f"http://{address}:{WORKER_PORTS[0]}/api/jobs"
    status, _, body = http(host, "POST", base, {"id": job_id, "payload": {"check": True}})
    assert status == 202, body
    deadline = time.time() + 180
    job = {}
    while time.time() < deadline:
        status, _, body = http(host, "GET", f"{base}/{job_id}")
        assert status == 200, body
        job = json.loads(body)
        if job["status"] == "applied":
            break
        time.sleep(0.5)
    assert job.get("status") == "applied", job
    assert job["attempts"] >= 1
    assert job["applied_by"].endswith(tuple(f"-{p}" for p in WORKER_PORTS))


def test_second_master_for_the_node_id_refuses_to_start(host):
    # The master's own environment, run once more by hand as the app user.
    cmd = host.run(
        "cd / && env -i PATH=/usr/bin:/bin sh -c 'set -a; . /etc/clusterkit/app.env; "
        ". /etc/clusterkit/master.env; exec setpriv --reuid clusterkit --regid clusterkit "
        "--init-groups timeout 150 /opt/clusterkit/app/venv/bin/clusterkit-app'"
    )
    assert cmd.rc == 3, cmd.stderr
    assert "another master for NODE_ID=" in cmd.stderr
    assert "refusing to start" in cmd.stderr
    assert host.service("clusterkit-master.service").is_running
