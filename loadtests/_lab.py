"""Facts about the deployed cluster that the load tests need, read rather than typed in.

The number of workers comes from HAProxy's stats of the deployed front end (every server of
the API backend, UP or not: a stopped worker still counts as capacity that should be there);
when the stats are unreachable, from the inventory (`app_workers` hosts × `app_workers_per_host`).
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
INVENTORY = Path(os.environ.get("CLUSTERKIT_INVENTORY", ROOT / "inventory" / "lab"))
STATS_URL = os.environ.get("CLUSTERKIT_STATS_URL", "http://127.0.0.1:8404/stats;csv")
STATS_USER = os.environ.get("CLUSTERKIT_STATS_USER", "admin")
BACKEND = os.environ.get("CLUSTERKIT_BACKEND", "app_workers")
DEFAULT_WORKERS_PER_HOST = 2


@dataclass(frozen=True)
class Server:
    name: str
    status: str


def secret(name: str) -> str | None:
    path = INVENTORY / ".secrets" / name
    return path.read_text().split(" salt=")[0].strip() if path.exists() else None


def stats_password() -> str | None:
    return os.environ.get("CLUSTERKIT_STATS_PASSWORD") or secret("haproxy_stats_password")


def backend_servers(timeout: float = 5.0) -> list[Server]:
    """Servers of the API backend as HAProxy sees them (raises when stats are unreachable)."""
    password = stats_password()
    auth = (STATS_USER, password) if password else None
    response = requests.get(STATS_URL, auth=auth, timeout=timeout)
    response.raise_for_status()
    rows = csv.DictReader(io.StringIO(response.text.lstrip("# ")))
    return [
        Server(row["svname"], row["status"])
        for row in rows
        if row["pxname"] == BACKEND and row["svname"] not in ("FRONTEND", "BACKEND")
    ]


def inventory() -> dict:
    """`ansible-inventory --list` of the inventory in use."""
    out = subprocess.run(
        ["ansible-inventory", "-i", str(INVENTORY), "--list"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out)


def inventory_worker_count() -> int:
    inv = inventory()
    hostvars = inv["_meta"]["hostvars"]
    hosts = inv.get("app_workers", {}).get("hosts", [])
    return sum(
        int(hostvars.get(h, {}).get("app_workers_per_host", DEFAULT_WORKERS_PER_HOST))
        for h in hosts
    )


def worker_count() -> tuple[int, str]:
    """(number of workers deployed, where the number came from)."""
    try:
        servers = backend_servers()
        if servers:
            return len(servers), f"HAProxy stats ({STATS_URL})"
    except requests.RequestException:
        pass
    return inventory_worker_count(), f"inventory ({INVENTORY})"
