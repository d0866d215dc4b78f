"""clusterkit.inventory, the inventory model the tests, scripts and load tests share: its
worker layout is the one the roles deploy."""

from __future__ import annotations

import pytest

from clusterkit import inventory as model
from tests.unit._render import lab


def test_workers_are_the_servers_haproxy_balances_over() -> None:
    world = lab()
    servers = world["lb1"]["haproxy_backend_servers"]
    assert [(s["name"], s["address"], int(s["port"])) for s in servers] == [
        (w.name, w.address, w.port) for w in model.workers(world)
    ]


def test_workers_of_one_host_and_after_a_scale_out() -> None:
    world = lab()
    assert [w.url for w in model.workers(world, "app2")] == [
        "http://10.77.0.22:8180",
        "http://10.77.0.22:8181",
    ]
    scaled = model.workers(world, app_workers_per_host=4)
    assert [w.name for w in scaled if w.host == "app1"] == [f"app1-{p}" for p in range(8180, 8184)]
    assert len(scaled) == 4 * len(model.group(world, "app_workers"))


def test_hosts_outside_app_workers_run_none() -> None:
    assert model.workers(lab(), "data1") == []


def test_a_missing_inventory_is_named() -> None:
    with pytest.raises(FileNotFoundError, match="inventory/nowhere"):
        model.load("inventory/nowhere")
