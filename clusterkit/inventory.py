"""The inventory model: an Ansible inventory's hosts, groups and variables resolved the way a
play resolves them (role defaults, the inventory, role vars; Jinja evaluated lazily), and the
app tier's worker layout computed once from them.

    from clusterkit.inventory import load, workers
    world = load("inventory/lab")
    world["data1"]["redis_port"]          # 6379, as the redis role renders it
    [w.url for w in workers(world)]       # every app worker HAProxy balances over

The variables come from pyinfra_deploy.variables (the same code the pyinfra engine deploys
with, proved equal to Ansible's rendering by tests/unit/test_render_equivalence.py).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

from pyinfra_deploy.variables import ROOT, HostVars, World, ansible_inventory, inventory_path

__all__ = [
    "ROOT",
    "HostVars",
    "World",
    "Worker",
    "ansible_inventory",
    "group",
    "inventory_path",
    "load",
    "workers",
]


def load(path: str | Path | None = None) -> World:
    """The inventory at `path` (default: $CLUSTERKIT_INVENTORY, else inventory/lab), read once
    per process however the path is spelled."""
    resolved = Path(path) if path is not None else inventory_path()
    if not resolved.is_absolute():
        resolved = ROOT / resolved
    if not resolved.exists():
        raise FileNotFoundError(f"inventory {resolved}: no such file or directory")
    return _load(resolved.resolve())


@cache
def _load(path: Path) -> World:
    # The resolved path: `ansible-inventory --list` (cached by path) runs once for the
    # tests, the load tests and this model together.
    return World(path)


def group(world: World, name: str) -> list[str]:
    """The hosts of an inventory group (children included), in inventory order."""
    return list(world.groups.get(name, []))


class Worker(NamedTuple):
    """One app worker: where it runs, its address and port, and its name in HAProxy."""

    host: str
    address: str
    port: int

    @property
    def name(self) -> str:
        return f"{self.host}-{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"


def workers(world: World, host: str | None = None, **overrides: Any) -> list[Worker]:
    """Every app worker of group app_workers (or of one host): the app role's
    app_worker_ports on each host's clusterkit_address. `overrides` are variables as a play's
    extra vars would set them (app_workers_per_host=4: the layout after a scale-out)."""
    hosts = [host] if host is not None else group(world, "app_workers")
    out: list[Worker] = []
    for name in hosts:
        v: Any = HostVars(world, name, overrides) if overrides else world[name]
        out += [Worker(name, str(v["clusterkit_address"]), int(p)) for p in v["app_worker_ports"]]
    return out
