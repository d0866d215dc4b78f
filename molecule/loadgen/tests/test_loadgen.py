"""Verify the loadgen role on a real systemd container: the workers run as units, and a real
Locust master started on the same host sees them connect, runs a short load through them
against a stand-in target, and gets them back (Restart=always) once the run is over."""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path

import pytest

testinfra_hosts = ["ansible://loadgen"]

ROOT = Path(__file__).resolve().parents[3]
HOME = "/opt/clusterkit/loadgen"
LOCUST = f"{HOME}/venv/bin/locust"
WORKERS = [1, 2]  # loadgen_workers_per_host in the converge's last play
SURPLUS = 3  # deployed by the first play, removed by the last
TARGET = "http://127.0.0.1:18080"  # the converge's stand-in target
REPORT = "/tmp/molecule-locust-report.json"
# Runs on the host: GET a URL, print the body.
FETCH = (
    "import sys, urllib.request; "
    "print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())"
)


def unit(index: int) -> str:
    return f"clusterkit-locust-worker@{index}.service"


def show(host, name: str) -> dict[str, str]:
    out = host.check_output(
        f"systemctl show --property=ActiveState,SubState,MainPID,NRestarts {name}"
    )
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def wait_active(host, indexes, other_than=None, timeout=90) -> dict[int, str]:
    """MainPID of each worker once all are active (and, with other_than, all restarted)."""
    deadline = time.time() + timeout
    while True:
        states = {i: show(host, unit(i)) for i in indexes}
        pids = {i: s["MainPID"] for i, s in states.items()}
        if all(s["ActiveState"] == "active" and s["MainPID"] != "0" for s in states.values()) and (
            other_than is None or all(pids[i] != other_than[i] for i in indexes)
        ):
            return pids
        if time.time() > deadline:
            pytest.fail(f"workers not (back) up within {timeout} s: {states}")
        time.sleep(1)


def requirements_pin(package: str) -> str:
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        name, sep, version = line.partition("==")
        if sep and name.strip() == package:
            return version.strip()
    raise AssertionError(f"{package} is not pinned in requirements.txt")


def stub_requests(host) -> int:
    """Requests the stand-in target has served so far."""
    out = host.check_output("python3 -c %s %s", FETCH, f"{TARGET}/stub/stats")
    return json.loads(out)["requests"]


def test_locust_is_installed_at_the_pinned_version(host):
    pin = requirements_pin("locust")
    installed = host.check_output(
        "%s -c %s",
        f"{HOME}/venv/bin/python",
        "from importlib.metadata import version; print(version('locust'))",
    )
    assert installed.strip() == pin
    assert host.check_output(f"{LOCUST} --version").startswith(f"locust {pin} ")


def test_load_tests_are_the_repos(host):
    local = sorted((ROOT / "loadtests").glob("*.py"))
    assert local
    remote = host.check_output(f"cd {HOME}/loadtests && ls -1 -- *.py").split()
    assert remote == [p.name for p in local]
    for path in local:
        copy = host.file(f"{HOME}/loadtests/{path.name}")
        assert copy.sha256sum == hashlib.sha256(path.read_bytes()).hexdigest(), path.name
        assert (copy.user, copy.mode) == ("root", 0o644)


def test_workers_are_active_enabled_and_run_as_locust(host):
    pids = wait_active(host, WORKERS)
    address = host.check_output("ip -4 route get 1.1.1.1")
    address = re.search(r"\bsrc (\S+)", address).group(1)
    for index in WORKERS:
        assert host.service(unit(index)).is_enabled, unit(index)
        pid = pids[index]
        assert host.check_output(f"ps -o user= -p {pid}").strip() == "locust"
        argv = host.check_output(f"tr '\\0' ' ' < /proc/{pid}/cmdline").split()
        assert argv[argv.index("--worker") + 1 :] == [
            "--master-host",
            address,
            "--master-port",
            "5557",
        ]
        assert argv[argv.index("-f") + 1] == f"{HOME}/loadtests"


def test_surplus_worker_is_stopped_and_disabled(host):
    surplus = host.service(unit(SURPLUS))
    assert not surplus.is_running
    assert not surplus.is_enabled
    # (activating: a worker between two attempts to reach its master, Restart=always)
    running = host.check_output(
        "systemctl list-units --state=active,activating --plain --no-legend"
        " 'clusterkit-locust-worker@*'"
    )
    assert sorted(line.split()[0] for line in running.splitlines()) == [unit(i) for i in WORKERS]


def test_a_real_master_sees_the_workers_and_runs_the_load_on_them(host):
    before = wait_active(host, WORKERS)
    served_before = stub_requests(host)
    host.run(f"rm -f {REPORT}")
    # A distributed run as the README describes it, with the master on this host: it waits
    # for both workers, runs 2 users on them for 5 s, checks the load tests' thresholds
    # against the one stand-in backend (--workers 1) and exits; it runs no users itself.
    run = host.run(
        f"cd /tmp && timeout 300 {LOCUST} -f {HOME}/loadtests --master --master-bind-port 5557"
        " --headless -u 2 -r 2 -t 5s --expect-workers 2 --expect-workers-max-wait 120"
        f" --host {TARGET} --workers 1 --report-json {REPORT}"
    )
    log = run.stdout + run.stderr
    assert run.rc == 0, log
    assert re.search(r"reported as ready\. 2 workers connected", log), log
    assert "Sending spawn jobs of 2 users at 2.00 spawn rate to 2 ready workers" in log, log
    assert "all thresholds met" in log, log

    report = json.loads(host.file(REPORT).content_string)
    assert report["requests"] > 0
    assert report["failures"] == 0
    # The workers tell the master which backend answered: the stand-in target, every time.
    assert report["per_worker_requests"] == {"stub": report["requests"]}
    assert stub_requests(host) - served_before >= report["requests"]

    # The master told its workers to quit at the end; systemd starts them again.
    wait_active(host, WORKERS, other_than=before)
    for index in WORKERS:
        assert int(show(host, unit(index))["NRestarts"]) >= 1
