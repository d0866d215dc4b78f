"""The gated Locust run against the deployed lab: `locust -f loadtests --headless` exits 0 and
prints per-worker throughput when every worker serves, and exits non-zero when one worker is
stopped while the threshold asks for (nearly) full capacity. Each run is bounded by `-t`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import (
    ROOT,
    front_end_url,
    group_hosts,
    secret,
    stats_url,
    testinfra_host,
    worker_ports,
)

# Measures throughput and stops a worker: runs alone, after the read-only tests, with the
# test runner's background lanes held (quiet_machine).
pytestmark = [pytest.mark.serial, pytest.mark.usefixtures("quiet_machine")]

STATS = stats_url()
RUN_S = 30


def locust(tmp_path: Path, *extra: str, run_s: int = RUN_S) -> tuple[int, str, dict]:
    """Run the README's headless command; return (exit code, output, --report-json figures)."""
    report = tmp_path / "report.json"
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        "loadtests",
        "--headless",
        "-u",
        "20",
        "-r",
        "20",
        "-t",
        f"{run_s}s",
        "--only-summary",
        "--report-json",
        str(report),
        *extra,
    ]
    # The lab under test, unless the caller points Locust elsewhere.
    env = {"LOCUST_HOST": front_end_url(), "CLUSTERKIT_STATS_URL": STATS} | os.environ
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=run_s + 120, check=False
    )
    output = done.stdout + done.stderr
    figures = json.loads(report.read_text()) if report.exists() else {}
    return done.returncode, output, figures


def backend_status(password: str) -> dict[str, str]:
    rows = requests.get(STATS, auth=("admin", password), timeout=5).text.lstrip("# ")
    lines = rows.splitlines()
    header = lines[0].split(",")
    status: dict[str, str] = {}
    for line in lines[1:]:
        row = dict(zip(header, line.split(","), strict=False))
        if row.get("pxname") == "app_workers" and row["svname"] not in ("FRONTEND", "BACKEND"):
            status[row["svname"]] = row["status"]
    return status


def wait_all_up(password: str, limit_s: float = 120) -> dict[str, str]:
    deadline = time.monotonic() + limit_s
    status = backend_status(password)
    while time.monotonic() < deadline and set(status.values()) != {"UP"}:
        time.sleep(2)
        status = backend_status(password)
    return status


@pytest.fixture(scope="module")
def stats_password() -> str:
    return secret("haproxy_stats_password")


def test_gated_run_passes_and_prints_per_worker_throughput(tmp_path, stats_password):
    assert set(wait_all_up(stats_password).values()) == {"UP"}
    code, output, figures = locust(tmp_path)
    assert code == 0, output[-3000:]
    assert "per worker" in output, output[-3000:]
    assert "all thresholds met" in output, output[-3000:]
    expected = sum(len(worker_ports(h)) for h in group_hosts("app_workers"))
    assert figures["workers"] == expected
    assert len(figures["per_worker_requests"]) == expected, figures
    assert figures["failures"] == 0, figures


def test_gated_run_fails_with_a_worker_stopped(tmp_path, stats_password):
    host_name = group_hosts("app_workers")[-1]
    host = testinfra_host(host_name)
    unit = f"clusterkit-worker@{worker_ports(host_name)[0]}.service"
    host.run(f"systemctl stop {unit}")
    try:
        code, output, figures = locust(tmp_path, "--min-capacity-ratio", "0.95")
    finally:
        host.run(f"systemctl start {unit}")
        wait_all_up(stats_password)
    assert code != 0, output[-3000:]
    assert "threshold missed: per-worker throughput" in output, output[-3000:]
    assert len(figures["per_worker_requests"]) == figures["workers"] - 1, figures
