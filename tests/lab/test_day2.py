"""Day-2 operations under constant load: the rolling update and the scale playbooks finish
with 0 failed requests. Traffic goes only to the lab (its front end: the LBs' virtual address,
else 127.0.0.1:8080), at a fixed rate well below the capacity left while one app host is
drained, for at least 60 s and at most LOAD_LIMIT_S. Each worker is drained on every LB."""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
from dataclasses import dataclass, field

import pytest
import requests

from clusterkit import inventory as model
from tests.conftest import (
    address,
    front_end_url,
    group_hosts,
    secret,
    stats_base_url,
    testinfra_host,
    virtual_address,
    worker_names,
    world,
)
from tests.conftest import (
    playbook as run_playbook,
)

# Changes the lab (a rolling update, scaling): runs alone, after the read-only tests.
pytestmark = pytest.mark.serial

NGINX = front_end_url()
STATS = stats_base_url()
BACKEND = "app_workers"
MIN_LOAD_S = 60
LOAD_LIMIT_S = 45 * 60
RATE = 8.0  # requests per second, in total
THREADS = 4


def app_hosts():
    return [testinfra_host(h) for h in group_hosts("app_workers")]


@dataclass
class Load:
    """Constant-rate POST /api/requests through nginx from a few threads (kept-alive)."""

    rate: float = RATE
    threads: int = THREADS
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    workers: dict[str, int] = field(default_factory=dict)
    started: float = 0.0
    stopped: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _pool: list[threading.Thread] = field(default_factory=list)

    def _run(self, offset: float) -> None:
        interval = self.threads / self.rate
        session = requests.Session()
        next_at = time.monotonic() + offset
        deadline = self.started + LOAD_LIMIT_S
        while not self._stop.is_set() and time.monotonic() < deadline:
            delay = next_at - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
                if self._stop.is_set():
                    break
            next_at += interval
            try:
                r = session.post(
                    f"{NGINX}/api/requests", json={"payload": {"day2": True}}, timeout=60
                )
                with self._lock:
                    if r.status_code == 200:
                        self.ok += 1
                        wid = r.headers.get("X-Worker-Id", "?")
                        self.workers[wid] = self.workers.get(wid, 0) + 1
                    else:
                        self.failures.append(
                            f"{time.strftime('%H:%M:%S')} HTTP {r.status_code}: {r.text[:120]}"
                        )
            except requests.RequestException as exc:
                with self._lock:
                    self.failures.append(f"{time.strftime('%H:%M:%S')} {exc!r}")
                session = requests.Session()

    def __enter__(self) -> Load:
        self.started = time.monotonic()
        for i in range(self.threads):
            t = threading.Thread(target=self._run, args=(i / self.rate,), daemon=True)
            t.start()
            self._pool.append(t)
        return self

    def stop(self, at_least: float = MIN_LOAD_S) -> None:
        remaining = self.started + at_least - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)
        self._stop.set()
        for t in self._pool:
            t.join(timeout=90)
        self.stopped = time.monotonic()

    def summary(self) -> str:
        return (
            f"{self.ok} ok, {len(self.failures)} failed in {self.seconds:.0f} s "
            f"({self.ok / max(self.seconds, 1):.1f}/s); "
            f"by worker: {dict(sorted(self.workers.items()))}"
        )

    def __exit__(self, *exc) -> None:
        if not self._stop.is_set():
            self.stop(at_least=0)

    @property
    def seconds(self) -> float:
        return self.stopped - self.started


def playbook(*args: str) -> subprocess.CompletedProcess[str]:
    return run_playbook(*args, timeout=LOAD_LIMIT_S)


def stats(base: str = STATS) -> dict[str, str]:
    r = requests.get(f"{base}/;csv", auth=("admin", secret("haproxy_stats_password")), timeout=10)
    r.raise_for_status()
    rows = [line.split(",") for line in r.text.splitlines() if line and not line.startswith("#")]
    return {row[1]: row[17] for row in rows if row[0] == BACKEND and row[1] != "BACKEND"}


def expected(per_host: int | None = None) -> set[str]:
    """HAProxy's server names: as deployed, or with per_host workers on every app host."""
    if per_host is None:
        return worker_names()
    return {w.name for w in model.workers(world(), app_workers_per_host=per_host)}


def wait_all_up(names: set[str], timeout: float = 60) -> dict[str, str]:
    deadline = time.time() + timeout
    while True:
        current = stats()
        if current == {n: "UP" for n in names} or time.time() > deadline:
            return current
        time.sleep(1)


class DrainWatch:
    """Polls the stats of every LB's own HAProxy (its private address, port 8404) while a
    day-2 playbook runs, and records per LB which servers it saw in state DRAIN."""

    def __init__(self) -> None:
        self.seen: dict[str, set[str]] = {lb: set() for lb in group_hosts("lb")}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.3):
            for lb, drained in self.seen.items():
                try:
                    current = stats(f"http://{address(lb)}:8404")
                except requests.RequestException:
                    continue
                drained.update(name for name, status in current.items() if status == "DRAIN")

    def __enter__(self) -> DrainWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def worker_pids(host) -> dict[str, str]:
    units = host.check_output(
        "systemctl list-units --plain --no-legend --state=running 'clusterkit-worker@*.service'"
    ).split("\n")
    out = {}
    for line in units:
        if line.strip():
            unit = line.split()[0]
            out[unit] = host.check_output(f"systemctl show --property MainPID --value {unit}")
    return out


def report(load: Load, run: subprocess.CompletedProcess[str]) -> str:
    return (
        f"playbook rc={run.returncode}, {load.ok} ok, {len(load.failures)} failed"
        f" in {load.seconds:.0f} s; first failures: {load.failures[:5]}\n"
        f"--- playbook tail ---\n{run.stdout[-3000:]}{run.stderr[-1500:]}"
    )


@pytest.fixture(scope="module", autouse=True)
def lab_ready():
    current = wait_all_up(expected(), timeout=60)
    if current != {n: "UP" for n in expected()}:
        pytest.fail(f"not every worker is UP before the day-2 tests: {current}")


def test_rolling_update_under_load_fails_no_request() -> None:
    hosts = app_hosts()
    before = [worker_pids(h) for h in hosts]
    # The LBs' private addresses are reached only when the lab's network is on this machine
    # (virtual_address() checks it); elsewhere the drain is not watched.
    watch_lbs = virtual_address() is not None
    with Load() as load, DrainWatch() if watch_lbs else contextlib.nullcontext() as watch:
        run = playbook("playbooks/rolling-update.yml")
        load.stop()
    print(f"rolling update: {load.summary()}")
    if watch is not None:
        # Each worker was drained on the HAProxy of every load balancer, not only on one.
        print(f"drained, per LB: { {lb: sorted(s) for lb, s in watch.seen.items()} }")
        assert watch.seen == {lb: expected() for lb in group_hosts("lb")}
    assert run.returncode == 0, report(load, run)
    assert load.failures == [], report(load, run)
    assert load.seconds >= MIN_LOAD_S
    assert load.ok >= RATE * MIN_LOAD_S * 0.8, report(load, run)
    # Every worker was restarted, and all are back in service.
    for h, pids in zip(hosts, before, strict=True):
        after = worker_pids(h)
        assert set(after) == set(pids)
        assert all(after[u] != pids[u] for u in pids), (pids, after)
    assert wait_all_up(expected()) == {n: "UP" for n in expected()}


def test_scale_up_and_down_under_load_fails_no_request() -> None:
    more = 3
    try:
        with Load() as load:
            run = playbook("playbooks/scale.yml", "-e", json.dumps({"app_workers_per_host": more}))
            load.stop()
        print(f"scale up to {more} per host: {load.summary()}")
        assert run.returncode == 0, report(load, run)
        assert load.failures == [], report(load, run)
        assert load.seconds >= MIN_LOAD_S
        assert wait_all_up(expected(more)) == {n: "UP" for n in expected(more)}
        # The new workers take requests.
        seen = set()
        with requests.Session() as s:
            for _ in range(60):
                seen.add(
                    s.post(f"{NGINX}/api/requests", json={"payload": {}}, timeout=30).headers[
                        "X-Worker-Id"
                    ]
                )
        assert seen == expected(more)
    finally:
        with Load() as load:
            run = playbook("playbooks/scale.yml")
            load.stop()
        print(f"scale back to the inventory: {load.summary()}")
    assert run.returncode == 0, report(load, run)
    assert load.failures == [], report(load, run)
    assert load.seconds >= MIN_LOAD_S
    assert wait_all_up(expected()) == {n: "UP" for n in expected()}
