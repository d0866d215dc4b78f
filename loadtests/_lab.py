"""Facts about the deployed cluster that the load tests need, read rather than typed in.

Where the front end is: LOCUST_HOST, else the load balancers' virtual address (keepalived) when
the inventory has one and its lab network exists on this machine with that subnet, else the
first LB's published port on 127.0.0.1 (http://127.0.0.1:8080 in the default lab). HAProxy's
stats: CLUSTERKIT_STATS_URL, else the same choice on the stats port.

The number of workers comes from HAProxy's stats of the deployed front end (every server of
the API backend, UP or not: a stopped worker still counts as capacity that should be there);
when the stats are unreachable, from the inventory (`app_workers` hosts × `app_workers_per_host`).
"""

from __future__ import annotations

import csv
import io
import ipaddress
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
INVENTORY = Path(os.environ.get("CLUSTERKIT_INVENTORY", ROOT / "inventory" / "lab"))
LAB_DEFAULTS = {"lab_network_name": "clusterkit-lab", "lab_subnet": "10.77.0.0/24"}
STATS_USER = os.environ.get("CLUSTERKIT_STATS_USER", "admin")
BACKEND = os.environ.get("CLUSTERKIT_BACKEND", "app_workers")


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
    response = requests.get(stats_url(), auth=auth, timeout=timeout)
    response.raise_for_status()
    rows = csv.DictReader(io.StringIO(response.text.lstrip("# ")))
    return [
        Server(row["svname"], row["status"])
        for row in rows
        if row["pxname"] == BACKEND and row["svname"] not in ("FRONTEND", "BACKEND")
    ]


EMPTY_INVENTORY: dict = {"_meta": {"hostvars": {}}}


def _model():
    """clusterkit.inventory, the kit's inventory model (on the controller: a load generator
    host has the tests, not the kit)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from clusterkit import inventory as model

    return model


@cache
def inventory() -> dict:
    """`ansible-inventory --list` of the inventory in use; an empty inventory where there is
    none to read (a Locust worker on a load generator host has the tests, not the inventory,
    and its master tells it the front end)."""
    if not (ROOT / INVENTORY).exists():
        return EMPTY_INVENTORY
    return _model().ansible_inventory((ROOT / INVENTORY).resolve())


def inventory_worker_count() -> int:
    """The number of app workers the inventory deploys (clusterkit.inventory.workers)."""
    if not (ROOT / INVENTORY).exists():
        return 0
    model = _model()
    return len(model.workers(model.load(ROOT / INVENTORY)))


def worker_count() -> tuple[int, str]:
    """(number of workers deployed, where the number came from)."""
    try:
        servers = backend_servers()
        if servers:
            return len(servers), f"HAProxy stats ({stats_url()})"
    except requests.RequestException:
        pass
    return inventory_worker_count(), f"inventory ({INVENTORY})"


def lb_setting(name: str, default: object = None) -> object:
    """A variable of the first load balancer host as the inventory sets it, else default."""
    inv = inventory()
    lbs = inv.get("lb", {}).get("hosts", [])
    return inv["_meta"]["hostvars"].get(lbs[0], {}).get(name, default) if lbs else default


def docker_network_subnets(name: str) -> list[str]:
    """Subnets of the Docker network `name` on this machine ([] when there is none)."""
    try:
        out = subprocess.run(
            ["docker", "network", "inspect", name, "--format", "{{json .IPAM.Config}}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    if out.returncode != 0:
        return []
    return [c.get("Subnet", "") for c in json.loads(out.stdout.strip() or "null") or []]


@cache
def virtual_address() -> str | None:
    """The LBs' virtual address when two or more LB hosts share one and it lies on a lab
    network that exists here with the inventory's subnet; else None (nothing aims at it)."""
    vip = lb_setting("keepalived_virtual_ipaddress")
    if len(inventory().get("lb", {}).get("hosts", [])) < 2 or not vip:
        return None
    network = str(lb_setting("lab_network_name", LAB_DEFAULTS["lab_network_name"]))
    subnet = str(lb_setting("lab_subnet", LAB_DEFAULTS["lab_subnet"]))
    if subnet not in docker_network_subnets(network):
        return None
    return str(vip) if ipaddress.ip_address(str(vip)) in ipaddress.ip_network(subnet) else None


def published(container_port: int, default: int) -> str:
    """127.0.0.1:<port> where the first LB's container port is published (lab_published_ports)."""
    for spec in lb_setting("lab_published_ports", []) or []:  # type: ignore[union-attr]
        parts = str(spec).split(":")
        if len(parts) == 3 and parts[2] == str(container_port):
            return f"{parts[0]}:{parts[1]}"
    return f"127.0.0.1:{default}"


def front_end_url(scheme: str = "http") -> str:
    """The front end's base URL, http or https (see the module's docstring)."""
    if scheme == "http" and os.environ.get("LOCUST_HOST"):
        return os.environ["LOCUST_HOST"].rstrip("/")
    vip = virtual_address()
    port, default = (443, 8443) if scheme == "https" else (80, 8080)
    return f"{scheme}://{vip}" if vip else f"{scheme}://{published(port, default)}"


def stats_url() -> str:
    """HAProxy's stats CSV URL (see the module's docstring)."""
    if os.environ.get("CLUSTERKIT_STATS_URL"):
        return os.environ["CLUSTERKIT_STATS_URL"]
    port = int(str(lb_setting("haproxy_stats_port", 8404)))
    vip = virtual_address()
    return f"http://{vip}:{port}/stats;csv" if vip else f"http://{published(port, 8404)}/stats;csv"
