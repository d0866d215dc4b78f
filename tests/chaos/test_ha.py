"""The loss of any one host stops nothing and loses nothing acknowledged: each scenario runs the
Locust scenario through the floating address, submits jobs and sends requests whose
acknowledgements it remembers (tests/chaos/ha.py RequestProbe), takes one host or service away,
and asserts what users saw (failed requests, failover time: first failure to first success) and
that every acknowledged request record and job survived, each job applied exactly once.

    python -m pytest tests/chaos/test_ha.py -q

Figures go to results/chaos.json and results/chaos.md with the other scenarios'.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymongo
import pytest

from tests.chaos import ha
from tests.chaos.conftest import (
    FRONTEND,
    JobBatch,
    LoadFigures,
    background_load,
    container,
    fault,
    main_pid,
    mongo_member_state,
    mongo_self_state,
    on,
    running,
    wait_until,
)
from tests.chaos.test_faults import assert_exactly_once, record
from tests.conftest import group_hosts

# Bounds (README "What happens when a host dies" gives the measured figures behind each).
# The floating address moves when its holder stops (keepalived sends priority 0 on its way
# down) or its nginx/HAProxy stops answering (tracked check: 1 s interval, 2 failures).
MAX_LB_FAILOVER_S = 8.0
# Sentinel: down-after-milliseconds, then a vote and the promotion; clients ask Sentinel again
# on their next connection error.
MAX_REDIS_FAILOVER_S = 20.0
# MongoDB after kill -9 of the primary (no step-down): the election timeout (10 s), then the
# drivers' next server selection.
MAX_MONGODB_FAILOVER_S = 30.0
# A whole data host: the slower of its Redis and MongoDB failovers.
MAX_DATA_HOST_FAILOVER_S = 30.0
# Failed requests are bounded by the seconds of the run in which some failed (`error_seconds`),
# not by their share: the run ends a few seconds after the fault is over, so the share says
# more about the run's length, and closed-loop users retry a fast 503 at once, so the count
# says more about the loop's speed than about the outage.
# Two data hosts stopped one after the other: each is a failover, so at most twice the bound
# of one with failing requests. (The share of failed requests is recorded, not bounded: it
# ranged from 6% to 41% in runs whose failovers all took under 10 s, because 503s from HAProxy
# come back at once while every worker's health check waits on the data tier.)
MAX_DATA_HOST_ERROR_S = 2 * MAX_DATA_HOST_FAILOVER_S
# After a partition heals: one primary again, every member its replica, every Sentinel agreeing.
MAX_HEAL_S = 45.0


@dataclass
class Run:
    """What one scenario's fault saw: when it started and what the scenario wants recorded."""

    fault_at: float
    extra: dict[str, Any]


def under_load(
    tmp_path: Path,
    results: dict[str, dict[str, Any]],
    mongo: pymongo.database.Database[dict[str, Any]],
    name: str,
    seconds: int,
    inject: Callable[[ha.RequestProbe], Run],
) -> tuple[LoadFigures, dict[str, Any]]:
    """Locust load, a closed loop of job submits and a request probe, all through the front
    end, while `inject` runs the fault; then every acknowledged job and request is checked.
    Returns the load figures and the recorded row."""
    batch = JobBatch(name.split()[0].lower())
    with (
        background_load(tmp_path, seconds) as load,
        batch.trickle([FRONTEND]),
        ha.RequestProbe(FRONTEND) as probe,
    ):
        time.sleep(2)
        run = inject(probe)
        after = time.time()
        wait_until(
            "a request through the front end after the fault",
            lambda: probe.succeeded_since(after),
            60,
            0.2,
        )
        assert load.remaining() > 0, "the fault outlasted the load run"
    figures = load.finish()
    jobs = batch.settle(mongo)
    acknowledged = probe.acknowledged()
    lost = ha.missing_requests(mongo, acknowledged)
    record(
        results,
        name,
        figures,
        jobs,
        **probe.figures(run.fault_at),
        # Seconds of the load run, from the fault on, in which some request failed: what a
        # user sees, independent of how fast a failing request comes back (a 503 from HAProxy
        # with no worker UP returns at once, so closed-loop users send many of them).
        error_seconds=len(figures.error_seconds(run.fault_at, time.time())),
        requests_acknowledged=len(acknowledged),
        requests_lost=len(lost),
        **run.extra,
    )
    row = results[name]
    assert not lost, f"{len(lost)} acknowledged request records lost, e.g. {lost[:3]}"
    assert_exactly_once(jobs)
    return figures, row


def needs(condition: bool, why: str) -> None:
    if not condition:
        pytest.skip(why)


def answered_after(probe: ha.RequestProbe, t: float, what: str, timeout: float) -> float:
    """Until a request sent at or after t succeeded."""
    return wait_until(what, lambda: probe.succeeded_since(t), timeout, 0.1)


def holder() -> str:
    holders = ha.vip_holders(on, running)
    assert len(holders) == 1, f"floating address {ha.vip()} held by {holders}"
    return holders[0]


def lb_pair() -> tuple[str, str]:
    """(the LB holding the floating address, another LB); skips with a single LB."""
    needs(ha.vip() is not None, "one LB host: no floating address")
    first = holder()
    return first, next(h for h in ha.LB_HOSTS if h != first)


def wait_vip_on(host: str, after: float, timeout: float = 30) -> float:
    return (
        wait_until(
            f"{ha.vip()} on {host}", lambda: ha.vip_holders(on, running) == [host], timeout, 0.1
        )
        - after
    )


# -- front ends -------------------------------------------------------------------------------


def test_stopping_the_lb_host_with_the_floating_address_moves_it_and_its_return_is_quiet(
    tmp_path: Path,
    chaos_results: dict[str, dict[str, Any]],
    mongo: pymongo.database.Database[dict[str, Any]],
) -> None:
    first, other = lb_pair()

    def inject(probe: ha.RequestProbe) -> Run:
        stopped_at = time.time()
        subprocess.run(["docker", "stop", container(first)], check=True, capture_output=True)
        moved_s = wait_vip_on(other, stopped_at)
        answered_after(probe, time.time(), "requests answered again", 30)
        time.sleep(3)
        returned_at = time.time()
        subprocess.run(["docker", "start", container(first)], check=True, capture_output=True)
        wait_until(
            f"keepalived running on {first} again",
            lambda: on(first, "systemctl is-active keepalived", check=False) == "active",
            90,
            0.5,
        )
        time.sleep(8)  # several advertisement intervals: a preempting LB would take it back now
        return Run(
            stopped_at,
            {
                "host": first,
                "vip_moved_s": round(moved_s, 2),
                "holder_after_return": ",".join(ha.vip_holders(on, running)),
                "failed_after_return": len(probe.failures(returned_at)),
            },
        )

    figures, row = under_load(
        tmp_path, chaos_results, mongo, "LB host with the VIP stopped and started", 60, inject
    )
    assert row["holder_after_return"] == other, f"the address moved back on return: {row}"
    assert row["failed_after_return"] == 0, f"the returning LB caused failures: {row}"
    assert row["failover_s"] <= MAX_LB_FAILOVER_S, row
    assert row["error_seconds"] <= MAX_LB_FAILOVER_S, (row, figures.error_kinds)


def test_nginx_stopped_on_the_holder_moves_the_floating_address(
    tmp_path: Path,
    chaos_results: dict[str, dict[str, Any]],
    mongo: pymongo.database.Database[dict[str, Any]],
) -> None:
    first, other = lb_pair()

    def inject(probe: ha.RequestProbe) -> Run:
        stopped_at = fault(first, "systemctl stop nginx")
        moved_s = wait_vip_on(other, stopped_at)
        answered_after(probe, time.time(), "requests answered again", 30)
        on(first, "systemctl start nginx")
        time.sleep(6)
        return Run(
            stopped_at,
            {
                "host": first,
                "vip_moved_s": round(moved_s, 2),
                "holder_after_restart": ",".join(ha.vip_holders(on, running)),
            },
        )

    figures, row = under_load(
        tmp_path, chaos_results, mongo, "nginx stopped on the VIP holder", 40, inject
    )
    assert row["holder_after_restart"] == other, f"the address moved back: {row}"
    assert row["vip_moved_s"] <= MAX_LB_FAILOVER_S, row
    # No bound on the Locust error count here: while the holder's nginx is down (~2 s until the
    # check fails twice) each connection is refused at once, and closed-loop users without
    # think time retry at once, so the count measures the loop's speed (1385 "HTTP 0" in one
    # 2.6 s outage), not the outage. The outage itself is bounded by the probe's failover.
    assert row["failover_s"] <= MAX_LB_FAILOVER_S, row


# -- Redis ------------------------------------------------------------------------------------


def test_kill_9_of_the_redis_primary_promotes_a_replica_and_loses_no_acknowledged_job(
    tmp_path: Path,
    chaos_results: dict[str, dict[str, Any]],
    mongo: pymongo.database.Database[dict[str, Any]],
) -> None:
    needs(ha.with_sentinels(), "one Redis: nothing to fail over to")
    primary = ha.redis_primary()
    assert primary is not None, ha.sentinel_views()

    def inject(probe: ha.RequestProbe) -> Run:
        killed_at = fault(primary, f"kill -9 {main_pid(primary, 'redis-server.service')}")
        promoted = wait_until(
            "Sentinel naming a new primary",
            lambda: ha.redis_primary() not in (None, primary),
            45,
            0.2,
        )
        return Run(
            killed_at,
            {"host": primary, "promoted_s": round(promoted - killed_at, 2)},
        )

    figures, row = under_load(tmp_path, chaos_results, mongo, "Redis primary kill -9", 50, inject)
    row["new_primary"] = ha.redis_primary()
    assert row["failover_s"] <= MAX_REDIS_FAILOVER_S, row
    assert row["error_seconds"] <= MAX_REDIS_FAILOVER_S, (row, figures.error_kinds)


def test_a_partitioned_redis_primary_leaves_one_primary_and_no_acknowledged_job_lost(
    tmp_path: Path,
    chaos_results: dict[str, dict[str, Any]],
    mongo: pymongo.database.Database[dict[str, Any]],
) -> None:
    needs(ha.with_sentinels(), "one Redis: nothing to fail over to")
    primary = ha.redis_primary()
    assert primary is not None, ha.sentinel_views()
    peers = [h for h in ha.DATA_HOSTS if h != primary]

    def inject(probe: ha.RequestProbe) -> Run:
        cut_at = fault(primary, ha.partition_command(peers))
        try:
            promoted = wait_until(
                "the majority side promoting a replica",
                lambda: ha.redis_primary() not in (None, primary),
                45,
                0.2,
            )
            # Long enough for the old primary to refuse writes (min-replicas-max-lag).
            time.sleep(max(0.0, cut_at + 15 - time.time()))
        finally:
            healed_at = fault(primary, ha.HEAL_COMMAND)
        single = wait_until("one primary again", lambda: not ha.redis_problems(), MAX_HEAL_S, 0.5)
        return Run(
            cut_at,
            {
                "host": primary,
                "promoted_s": round(promoted - cut_at, 2),
                "partition_s": round(healed_at - cut_at, 2),
                "one_primary_after_heal_s": round(single - healed_at, 2),
            },
        )

    figures, row = under_load(
        tmp_path, chaos_results, mongo, "Redis primary partitioned from the data hosts", 75, inject
    )
    roles = ha.redis_roles()
    masters = [h for h, info in roles.items() if info.get("role") == "master"]
    row["primary_after_heal"] = ",".join(masters)
    assert len(masters) == 1, f"split brain after healing: {roles}"
    assert masters[0] != primary, f"the partitioned primary kept its role: {roles}"
    assert row["failover_s"] <= MAX_HEAL_S, row


# -- MongoDB and whole data hosts -------------------------------------------------------------


def mongo_primary() -> str:
    return next(h for h, s in mongo_member_state().items() if s == "PRIMARY")


def test_kill_9_of_the_mongodb_primary_loses_no_acknowledged_record(
    tmp_path: Path,
    chaos_results: dict[str, dict[str, Any]],
    mongo: pymongo.database.Database[dict[str, Any]],
) -> None:
    primary = mongo_primary()

    def inject(probe: ha.RequestProbe) -> Run:
        killed_at = fault(primary, f"kill -9 {main_pid(primary, 'mongod.service')}")
        elected = wait_until(
            "a new MongoDB primary",
            lambda: any(s == "PRIMARY" and h != primary for h, s in mongo_member_state().items()),
            60,
            0.3,
        )
        return Run(killed_at, {"host": primary, "election_s": round(elected - killed_at, 2)})

    figures, row = under_load(tmp_path, chaos_results, mongo, "MongoDB primary kill -9", 60, inject)
    wait_until("the killed member back", lambda: mongo_self_state(primary) == "SECONDARY", 90, 1)
    assert row["failover_s"] <= MAX_MONGODB_FAILOVER_S, row
    assert row["error_seconds"] <= MAX_MONGODB_FAILOVER_S, (row, figures.error_kinds)


def test_stopping_a_data_host_then_another_keeps_requests_and_jobs(
    tmp_path: Path,
    chaos_results: dict[str, dict[str, Any]],
    mongo: pymongo.database.Database[dict[str, Any]],
) -> None:
    needs(len(ha.DATA_HOSTS) >= 3, "fewer than three data hosts: one is a single point")
    # The worst host first: the one with the Redis primary; then the MongoDB primary's host
    # (another host if that is the same one).
    first = ha.redis_primary() or ha.DATA_HOSTS[0]

    def stop_and_start(host: str, probe: ha.RequestProbe) -> dict[str, Any]:
        stopped_at = time.time()
        subprocess.run(["docker", "stop", container(host)], check=True, capture_output=True)
        answered_after(probe, time.time(), "requests answered with the host down", 60)
        time.sleep(5)
        subprocess.run(["docker", "start", container(host)], check=True, capture_output=True)
        back = wait_until(
            f"{host}'s Redis and MongoDB members back",
            lambda: not ha.redis_problems() and mongo_self_state(host) == "SECONDARY",
            120,
            1,
        )
        return {"stopped_at": stopped_at, "back_s": round(back - stopped_at, 2)}

    def inject(probe: ha.RequestProbe) -> Run:
        one = stop_and_start(first, probe)
        second = next(h for h in [mongo_primary(), *ha.DATA_HOSTS] if h != first)
        two = stop_and_start(second, probe)
        return Run(
            one["stopped_at"],
            {
                "hosts": f"{first},{second}",
                "first_back_s": one["back_s"],
                "second_failover_s": probe.outage_s(two["stopped_at"]),
                "second_back_s": two["back_s"],
            },
        )

    figures, row = under_load(
        tmp_path, chaos_results, mongo, "data host stopped, then another", 150, inject
    )
    assert row["failover_s"] <= MAX_DATA_HOST_FAILOVER_S, row
    assert row["second_failover_s"] <= MAX_DATA_HOST_FAILOVER_S, row
    assert row["error_seconds"] <= MAX_DATA_HOST_ERROR_S, (row, figures.error_kinds)
    assert all(running(h) for h in group_hosts("lab"))
