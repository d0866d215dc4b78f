"""The chaos suite's view of a deployed lab: its containers and units, HAProxy's server states,
a bounded background Locust run, jobs and their outcome in MongoDB, and the lab's health.

Everything is derived from the inventory under test (CLUSTERKIT_INVENTORY, default
inventory/lab): container names (`ansible_host` of the hosts of group `lab`), private addresses,
ports and the secrets in <inventory>/.secrets. The front end is LOCUST_HOST, else the floating
address when the inventory has one and its lab network exists on this machine, else lb1's
published http://127.0.0.1:8080; HAProxy's stats CSV likewise (CLUSTERKIT_STATS_URL; see
loadtests/_lab.py).

A session fixture writes the figures of every scenario that ran to results/chaos.json and
results/chaos.md.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pymongo
import pytest
import redis
import redis.sentinel
from clusterkit_app.store import job_key

from tests.chaos import ha
from tests.conftest import (
    INVENTORY,
    ROOT,
    address,
    group_hosts,
    lab_container,
    mongo_uri,
    secret,
    setting,
    worker_ports,
)

sys.path.insert(0, str(ROOT / "loadtests"))
import _lab  # noqa: E402  (the load tests' reading of HAProxy's stats)

# The floating address when the lab has one and its network is on this machine (loadtests/_lab).
FRONTEND = _lab.front_end_url()
RESULTS = ROOT / "results"
USERS_PER_WORKER = 3  # closed-loop Locust users per worker, as scripts/scaling-run.py
RESTORE_TIMEOUT_S = 150
# Steady load kept after a scenario's fault is over (its own waits for recovery have passed):
# then the Locust run ends, instead of idling to its -t bound, which only caps the fault.
LOAD_TAIL_S = 5.0

MASTER_HOSTS = group_hosts("app_master")
WORKER_HOSTS = group_hosts("app_workers")
WORKERS = [(h, p) for h in WORKER_HOSTS for p in worker_ports(h)]
SERVER_NAMES = [f"{h}-{p}" for h, p in WORKERS]  # HAProxy's server names (roles/haproxy)
WORKER_URLS = [f"http://{address(h)}:{p}" for h, p in WORKERS]
MASTER_HEALTH = [
    f"http://{address(h)}:{int(setting(h, 'app_master_health_port'))}/healthz" for h in MASTER_HOSTS
]

# The units each group runs (fixed names: Debian's packages, the mongodb and app roles).
GROUP_UNITS = {
    "lb": ["haproxy.service", "nginx.service"],
    "redis": ["redis-server.service"],
    "mongodb": ["mongod.service"],
    "etcd": ["etcd.service"],
    "app_master": ["clusterkit-master.service"],
}


def units(host: str) -> list[str]:
    out = [u for group, names in GROUP_UNITS.items() if host in group_hosts(group) for u in names]
    if host in WORKER_HOSTS:
        out += [f"clusterkit-worker@{p}.service" for p in worker_ports(host)]
    # Two or more LBs share a floating address (keepalived); two or more Redis members are
    # watched by Sentinel on the same hosts (roles/keepalived, roles/redis).
    if host in ha.LB_HOSTS and ha.vip() is not None:
        out.append("keepalived.service")
    if host in ha.REDIS_HOSTS and ha.with_sentinels():
        out.append("redis-sentinel.service")
    return out


def all_hosts() -> list[str]:
    return sorted({h for group in [*GROUP_UNITS, "app_workers"] for h in group_hosts(group)})


# -- hosts: containers of the lab -------------------------------------------------------------


def container(host: str) -> str:
    """The lab container of host; hosts outside group `lab` cannot be faulted from here."""
    if host not in group_hosts("lab"):
        pytest.skip(f"{host} is not a lab container (group lab): the chaos suite needs docker")
    return lab_container(host)


def on(host: str, command: str, timeout: float = 60, check: bool = True) -> str:
    """Run a shell command on a lab host (docker exec); returns stdout."""
    done = subprocess.run(
        ["docker", "exec", container(host), "sh", "-c", command],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"{host}: `{command}` exited {done.returncode}: {done.stderr[-500:]}")
    return done.stdout.strip()


def fault(host: str, command: str) -> float:
    """Run a fault on host; returns the wall-clock time the command started there (the host's
    clock: lab containers share the controller's kernel, so it compares with time.time())."""
    return float(on(host, f"date +%s.%N && {command}").splitlines()[0])


def wait_stopped(host: str, unit: str, timeout: float = 60) -> float:
    """Until unit is no longer active on host (a `systemctl stop --no-block` finished)."""
    return wait_until(
        f"{unit} stopped on {host}",
        lambda: on(host, f"systemctl is-active {unit}", check=False) in ("inactive", "failed"),
        timeout,
        0.5,
    )


def running(host: str) -> bool:
    done = subprocess.run(
        ["docker", "inspect", "-f", "{{.State.Running}}", container(host)],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() == "true"


def main_pid(host: str, unit: str) -> int:
    return int(on(host, f"systemctl show --value --property MainPID {unit}") or 0)


# -- HAProxy's view ---------------------------------------------------------------------------


def server_states() -> dict[str, str]:
    """Server name -> HAProxy's status of it ("UP", "UP 1/2", "DOWN", "DOWN 1/2", "MAINT", ...)."""
    return {s.name: s.status for s in _lab.backend_servers(timeout=2)}


class HaproxyWatch:
    """Polls HAProxy's stats every `interval` seconds in a thread and keeps every change of a
    server's state (its first word: UP, DOWN, MAINT, NOLB, DRAIN) with its wall-clock time."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.changes: list[tuple[float, str, str]] = []
        self.errors = 0
        self._last: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="haproxy-watch", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                states = server_states()
            except Exception:  # noqa: BLE001 - stats unreachable for a moment: keep polling
                self.errors += 1
                states = {}
            now = time.time()
            for name, status in states.items():
                state = status.split()[0] if status else "?"
                if self._last.get(name) != state:
                    self._last[name] = state
                    self.changes.append((now, name, state))
            self._stop.wait(self.interval)

    def __enter__(self) -> HaproxyWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def first(self, server: str, state: str, after: float) -> float | None:
        """Wall-clock time of the first change of server to state at or after `after`."""
        return next(
            (t for t, s, st in self.changes if s == server and st == state and t >= after), None
        )

    def wait(self, server: str, state: str, after: float, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.first(server, state, after)
            if found is not None:
                return found
            time.sleep(self.interval)
        return None


# -- background load --------------------------------------------------------------------------


@dataclass
class LoadFigures:
    requests: int
    errors: int
    error_ratio: float
    rps: float
    # Aggregated per-second samples: (unix time, total requests, total failures) so far.
    history: list[tuple[int, int, int]]
    error_kinds: dict[str, int]

    def errors_between(self, start: float, end: float) -> int:
        """Failures counted in the samples from start to end (1 s resolution, inclusive)."""
        before = [f for t, _, f in self.history if t <= start - 1]
        within = [f for t, _, f in self.history if t <= end + 1]
        return (within[-1] if within else 0) - (before[-1] if before else 0)

    def error_seconds(self, start: float, end: float) -> list[int]:
        """Seconds (unix) between start and end in which some request failed."""
        out = []
        previous = 0
        for t, _, f in self.history:
            if f > previous and start - 1 <= t <= end + 1:
                out.append(t)
            previous = f
        return out


class LoadRun:
    """`locust -f loadtests --headless` as a subprocess, bounded by -t: the project's own API
    scenario, closed-loop users, no gate (the chaos tests assert their own bounds)."""

    def __init__(self, seconds: int, workdir: Path, users: int) -> None:
        self.seconds = seconds
        self.users = users
        self.prefix = workdir / "locust"
        self.report = workdir / "report.json"
        self.log = workdir / "locust.log"
        cmd = [
            sys.executable, "-m", "locust", "-f", "loadtests", "--headless",
            "-u", str(users), "-r", str(users), "-t", f"{seconds}s",
            "--host", FRONTEND, "--workers", str(len(WORKERS)),
            "--csv", str(self.prefix), "--csv-full-history", "--report-json", str(self.report),
            "--only-summary", "--loglevel", "WARNING",
            "--min-capacity-ratio", "0", "--max-error-ratio", "1", "--max-p95-ms", "1e9",
        ]  # fmt: skip
        self.started = time.time()
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        self.ends = self.started + seconds

    def wait_serving(self, timeout: float = 30) -> None:
        """Until Locust's users have sent requests (its first samples are in the history)."""
        deadline = time.monotonic() + timeout
        history = Path(f"{self.prefix}_stats_history.csv")
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"locust ended early: {self.log.read_text()[-2000:]}"
            if history.exists() and any(r[1] > 0 for r in self._history()):
                return
            time.sleep(0.5)
        raise AssertionError(f"no load after {timeout} s: {self.log.read_text()[-2000:]}")

    def remaining(self) -> float:
        return self.ends - time.time()

    def _history(self) -> list[tuple[int, int, int]]:
        path = Path(f"{self.prefix}_stats_history.csv")
        if not path.exists():
            return []
        with path.open() as f:
            rows = [r for r in csv.DictReader(f) if r.get("Name") == "Aggregated"]
        return [
            (int(r["Timestamp"]), int(r["Total Request Count"]), int(r["Total Failure Count"]))
            for r in rows
        ]

    def finish(self, tail_s: float = LOAD_TAIL_S) -> LoadFigures:
        """Ends the run tail_s seconds from now (or at its -t bound, if that comes first):
        SIGTERM makes Locust stop its users and write its report and CSV files as at -t."""
        time.sleep(max(0.0, min(tail_s, self.remaining())))
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"locust did not end: {self.log.read_text()[-2000:]}") from None
        assert self.report.exists(), f"no locust report: {self.log.read_text()[-2000:]}"
        report = json.loads(self.report.read_text())
        kinds: dict[str, int] = {}
        failures = Path(f"{self.prefix}_failures.csv")
        if failures.exists():
            with failures.open() as f:
                for row in csv.DictReader(f):
                    kinds[row["Error"]] = kinds.get(row["Error"], 0) + int(row["Occurrences"])
        return LoadFigures(
            requests=int(report["requests"]),
            errors=int(report["failures"]),
            error_ratio=float(report["error_ratio"]),
            rps=round(float(report["throughput_rps"]), 2),
            history=self._history(),
            error_kinds=kinds,
        )


@contextmanager
def background_load(tmp_path: Path, seconds: int) -> Iterator[LoadRun]:
    """Load through the front end for `seconds`; the block runs while it does (after the first
    requests went through). The run is bounded by Locust's -t and ended on any error."""
    run = LoadRun(seconds, tmp_path, USERS_PER_WORKER * len(WORKERS))
    try:
        run.wait_serving()
        yield run
    except BaseException:
        run.proc.terminate()
        run.proc.wait(30)
        raise


# -- clients ----------------------------------------------------------------------------------


def mongo_member_state() -> dict[str, str]:
    """Replica set member (host name) -> state (PRIMARY, SECONDARY, ...), asked of each member
    with the admin user until one answers."""
    hosts = group_hosts("mongodb")
    port = int(setting(hosts[0], "mongodb_port"))
    by_addr = {f"{address(h)}:{port}": h for h in hosts}
    user = setting(hosts[0], "mongodb_admin_user")
    password = secret("mongodb_admin_password")
    for h in hosts:
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            mongo_uri(user, password, "admin", direct_to=address(h)),
            serverSelectionTimeoutMS=1500,
            connectTimeoutMS=1500,
        )
        try:
            status = client.admin.command("replSetGetStatus")
        except pymongo.errors.PyMongoError:
            continue
        finally:
            client.close()
        return {
            by_addr.get(m["name"], m["name"]): m["stateStr"] if m.get("health") else "DOWN"
            for m in status["members"]
        }
    return {}


def mongo_self_state(host: str) -> str | None:
    """The member's state as the member itself reports it (None while it does not answer).
    Another member's view can be a heartbeat old: right after a restart it may still show
    the state from before the stop."""
    hosts = group_hosts("mongodb")
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        mongo_uri(
            setting(hosts[0], "mongodb_admin_user"),
            secret("mongodb_admin_password"),
            "admin",
            direct_to=address(host),
        ),
        serverSelectionTimeoutMS=1500,
        connectTimeoutMS=1500,
    )
    try:
        status = client.admin.command("replSetGetStatus")
    except pymongo.errors.PyMongoError:
        return None
    finally:
        client.close()
    return next((m["stateStr"] for m in status["members"] if m.get("self")), None)


@pytest.fixture(scope="session")
def mongo() -> Iterator[pymongo.database.Database[dict[str, Any]]]:
    host = group_hosts("mongodb")[0]
    uri = mongo_uri(
        setting(host, "app_mongodb_user"),
        secret("mongodb_app_password"),
        setting(host, "app_mongodb_auth_source"),
    )
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        uri, serverSelectionTimeoutMS=20000
    )
    yield client[setting(host, "app_mongodb_database")]
    client.close()


def redis_client() -> redis.Redis:
    """A client of the Redis primary: through Sentinel (it follows a failover) when the
    inventory has Sentinels, else of the one Redis."""
    host = group_hosts("redis")[0]
    options: dict[str, Any] = {
        "password": secret("redis_password"),
        "db": int(setting(host, "app_redis_db")),
        "socket_timeout": 5,
        "socket_connect_timeout": 3,
        "decode_responses": True,
    }
    if ha.with_sentinels():
        sentinels = redis.sentinel.Sentinel(
            [(address(h), ha.sentinel_port()) for h in ha.REDIS_HOSTS],
            sentinel_kwargs={
                "password": secret("redis_sentinel_password"),
                "socket_timeout": 2,
                "socket_connect_timeout": 1.5,
            },
            **options,
        )
        return sentinels.master_for(ha.sentinel_master_name(), **options)
    return redis.Redis(host=address(host), port=int(setting(host, "redis_port")), **options)


@pytest.fixture(scope="session")
def queue() -> Iterator[redis.Redis]:
    client = redis_client()
    yield client
    client.close()


def etcd_status() -> dict[str, dict[str, Any]]:
    """etcd host -> its maintenance status (member_id, leader) or {} when it does not answer."""
    out: dict[str, dict[str, Any]] = {}
    for h in group_hosts("etcd"):
        url = f"http://{address(h)}:{int(setting(h, 'etcd_client_port'))}/v3/maintenance/status"
        try:
            r = httpx.post(url, json={}, timeout=2)
            out[h] = r.json() if r.status_code == 200 else {}
        except (httpx.HTTPError, ValueError):
            out[h] = {}
    return out


def etcd_leader() -> str:
    status = etcd_status()
    for h, s in status.items():
        if s and s.get("header", {}).get("member_id") == s.get("leader"):
            return h
    raise AssertionError(f"no etcd leader: {status}")


def http_ok(url: str, timeout: float = 2) -> bool:
    try:
        return httpx.get(url, timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


# -- jobs -------------------------------------------------------------------------------------


@dataclass
class JobFigures:
    submitted: int
    applied: int
    lost: int
    duplicated: int
    redelivered: int
    submit_retries: int

    def as_dict(self) -> dict[str, int]:
        return self.__dict__.copy()


@dataclass
class JobBatch:
    """Jobs of one scenario, ids <prefix><n>. POST /api/jobs with an id is idempotent, so a
    submit that failed (connection, 5xx) is sent again, to the next URL, until accepted."""

    tag: str
    prefix: str = ""
    accepted: list[str] = field(default_factory=list)
    retries: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.prefix = f"chaos-{self.tag}-{uuid.uuid4().hex[:8]}-"

    def submit(
        self, first: int, count: int, urls: list[str], threads: int = 8, deadline_s: float = 90
    ) -> None:
        local = threading.local()
        clients: list[httpx.Client] = []

        def one(n: int) -> None:
            if not hasattr(local, "client"):
                local.client = httpx.Client(timeout=10)
                clients.append(local.client)
            job_id = f"{self.prefix}{n:05d}"
            body = {"id": job_id, "payload": {"chaos": self.tag, "n": n}}
            give_up = time.monotonic() + deadline_s
            attempt = 0
            while True:
                url = f"{urls[(n + attempt) % len(urls)]}/api/jobs"
                try:
                    r = local.client.post(url, json=body)
                    if r.status_code == 202:
                        break
                    problem = f"{r.status_code} {r.text[:200]}"
                except httpx.HTTPError as exc:
                    problem = repr(exc)
                attempt += 1
                with self._lock:
                    self.retries += 1
                assert time.monotonic() < give_up, f"job {job_id} not accepted: {problem}"
                time.sleep(0.2)
            with self._lock:
                self.accepted.append(job_id)

        try:
            with ThreadPoolExecutor(max_workers=threads) as pool:
                list(pool.map(one, range(first, first + count)))
        finally:
            for c in clients:
                c.close()

    @contextmanager
    def trickle(self, urls: list[str], submitters: int = 4) -> Iterator[None]:
        """While the block runs, `submitters` threads submit jobs back to back (closed loop)."""
        stop = threading.Event()
        errors: list[BaseException] = []
        numbers = iter(range(10**6))
        lock = threading.Lock()

        def run() -> None:
            while not stop.is_set():
                with lock:
                    n = next(numbers)
                try:
                    self.submit(n, 1, urls, threads=1)
                except BaseException as exc:  # noqa: BLE001 - reported after the block
                    errors.append(exc)
                    return
                stop.wait(0.05)

        threads = [
            threading.Thread(target=run, name=f"jobs-{self.tag}-{i}", daemon=True)
            for i in range(submitters)
        ]
        for thread in threads:
            thread.start()
        try:
            yield
        finally:
            stop.set()
            for thread in threads:
                thread.join(120)
        assert not errors, f"submitting jobs failed: {errors[0]}"

    def settle(
        self, mongo: pymongo.database.Database[dict[str, Any]], timeout: float = 120
    ) -> JobFigures:
        """Wait until every accepted job is applied (or timeout); count the outcome in MongoDB:
        lost = accepted but never applied; duplicated = applied more than once (documents per
        id beyond the first, or a job record naming another worker than the applied document);
        redelivered = applied on a later attempt (the at-least-once delivery at work)."""
        query = {"_id": {"$regex": f"^{re.escape(self.prefix)}"}}
        ids = set(self.accepted)
        deadline = time.monotonic() + timeout
        docs: list[dict[str, Any]] = []
        while True:
            docs = list(mongo.applied_jobs.find(query, {"payload": 0}))
            if ids <= {d["_id"] for d in docs} or time.monotonic() > deadline:
                break
            time.sleep(1)
        applied = {d["_id"] for d in docs}
        mismatched = 0
        queue = redis_client()
        try:
            for d in docs[:: max(1, len(docs) // 50)]:
                by = queue.hget(job_key(d["_id"]), "applied_by")
                if by and by != d["worker_id"]:
                    mismatched += 1
        finally:
            queue.close()
        return JobFigures(
            submitted=len(ids),
            applied=len(applied & ids),
            lost=len(ids - applied),
            duplicated=len(docs) - len(applied) + mismatched,
            redelivered=sum(1 for d in docs if d.get("attempt", 1) > 1),
            submit_retries=self.retries,
        )


# -- health and restore -----------------------------------------------------------------------


def problems() -> list[str]:
    """What is not healthy in the lab right now (empty list: healthy)."""
    found: list[str] = []
    for h in all_hosts():
        if h in group_hosts("lab") and not running(h):
            found.append(f"container {container(h)} not running")
            continue
        want = units(h)
        states = on(h, f"systemctl is-active {' '.join(want)}", check=False).split()
        found += [f"{h}: {u} {s}" for u, s in zip(want, states, strict=False) if s != "active"]
    try:
        servers = server_states()
        found += [f"HAProxy: {n} {s}" for n, s in servers.items() if s != "UP"]
        found += [f"HAProxy: no server {n}" for n in SERVER_NAMES if n not in servers]
    except Exception as exc:  # noqa: BLE001
        found.append(f"HAProxy stats unreachable: {exc}")
    members = mongo_member_state()
    if list(members.values()).count("PRIMARY") != 1:
        found.append(f"MongoDB replica set has no single primary: {members}")
    found += [f"MongoDB {m} {s}" for m, s in members.items() if s not in ("PRIMARY", "SECONDARY")]
    found += [
        f"MongoDB {h} not in the replica set" for h in group_hosts("mongodb") if h not in members
    ]
    for h in group_hosts("etcd"):
        url = f"http://{address(h)}:{int(setting(h, 'etcd_client_port'))}/health"
        try:
            if httpx.get(url, timeout=2).json().get("health") != "true":
                found.append(f"etcd {h} unhealthy")
        except (httpx.HTTPError, ValueError) as exc:
            found.append(f"etcd {h}: {exc!r}")
    try:
        with redis_client() as r:
            r.ping()
    except redis.RedisError as exc:
        found.append(f"Redis: {exc!r}")
    found += ha.redis_problems()
    holders = ha.vip_holders(on, running)
    if ha.vip() is not None and len(holders) != 1:
        found.append(f"floating address {ha.vip()} held by {holders or 'no LB'}")
    found += [f"not healthy: {u}" for u in MASTER_HEALTH if not http_ok(u)]
    found += [f"not healthy: {u}/healthz" for u in WORKER_URLS if not http_ok(f"{u}/healthz")]
    return found


def restore(timeout: float = RESTORE_TIMEOUT_S) -> float:
    """Start whatever is stopped (containers, then units) and wait until the lab is healthy;
    returns the seconds it took. Fails naming what stayed unhealthy."""
    started = time.monotonic()
    for h in all_hosts():
        if h in group_hosts("lab") and not running(h):
            subprocess.run(["docker", "start", container(h)], check=True, capture_output=True)
    for h in ha.DATA_HOSTS:  # a partition a failed scenario left behind
        if h in group_hosts("lab") and running(h):
            on(h, ha.HEAL_COMMAND, check=False)
    remaining: list[str] = []
    while time.monotonic() - started < timeout:
        remaining = problems()
        if not remaining:
            return time.monotonic() - started
        for h in all_hosts():
            if h in group_hosts("lab") and running(h):
                # units that failed or were stopped; a unit still starting is left alone
                for u in units(h):
                    state = on(h, f"systemctl is-active {u}", check=False)
                    if state in ("inactive", "failed"):
                        on(h, f"systemctl start --no-block {u}", check=False)
        time.sleep(2)
    pytest.fail(f"the lab is not healthy {timeout:.0f} s after the scenario: {remaining}")


def wait_until(
    what: str, check: Callable[[], bool], timeout: float, interval: float = 0.2
) -> float:
    """Poll check until true; returns the wall-clock time it became true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return time.time()
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout:.0f} s")


# -- figures ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def chaos_results() -> Iterator[dict[str, dict[str, Any]]]:
    figures: dict[str, dict[str, Any]] = {}
    started = time.monotonic()
    yield figures
    if figures:
        write_results(figures, time.monotonic() - started)


def write_results(figures: dict[str, dict[str, Any]], duration_s: float) -> None:
    RESULTS.mkdir(exist_ok=True)
    summary = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m pytest tests/chaos -q",
        "inventory": str(INVENTORY),
        "frontend": FRONTEND,
        "machine_cpus": os.cpu_count(),
        "workers": len(WORKERS),
        "users": USERS_PER_WORKER * len(WORKERS),
        "suite_seconds": round(duration_s, 1),
        "scenarios": figures,
    }
    (RESULTS / "chaos.json").write_text(json.dumps(summary, indent=2) + "\n")
    columns = [
        ("scenario", "scenario"),
        ("requests", "requests"),
        ("errors", "errors"),
        ("error_ratio", "error ratio"),
        ("down_s", "DOWN s"),
        ("up_s", "UP again s"),
        ("takeover_s", "takeover s"),
        ("failover_s", "failover s"),
        ("requests_acknowledged", "requests acknowledged"),
        ("requests_lost", "acknowledged lost"),
        ("election_error_burst", "election error burst"),
        ("jobs_submitted", "jobs submitted"),
        ("jobs_applied", "applied"),
        ("jobs_lost", "lost"),
        ("jobs_duplicated", "duplicated"),
        ("jobs_redelivered", "redelivered"),
    ]
    lines = [
        "| " + " | ".join(title for _, title in columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for name, row in figures.items():
        cells = []
        for key, _ in columns:
            value = name if key == "scenario" else row.get(key)
            if key == "error_ratio" and isinstance(value, float):
                value = f"{value:.3%}"
            cells.append("–" if value is None else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"{len(WORKERS)} workers, {USERS_PER_WORKER * len(WORKERS)} closed-loop Locust users "
        f"through {FRONTEND}; whole suite {duration_s:.0f} s "
        f"(`python -m pytest tests/chaos -q`, {summary['measured_at']})."
    )
    (RESULTS / "chaos.md").write_text("\n".join(lines) + "\n")


@pytest.fixture(autouse=True)
def healthy_lab() -> Iterator[None]:
    """Every scenario starts on a healthy lab and leaves it healthy (or fails saying why)."""
    if not all_hosts():
        pytest.fail(f"inventory {INVENTORY} has no hosts")
    restore()
    yield
    restore()
