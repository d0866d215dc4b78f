"""What the chaos suite needs to see of the highly available parts of a deployed lab: which LB
holds the floating address, which Redis is primary (and what every member and Sentinel thinks),
acknowledged requests sent through the front end, and a network partition of one host.

Each helper reads the inventory under test (tests/conftest.py); names of variables and secrets
are the roles' own (roles/keepalived, roles/redis).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import pymongo
import redis

from tests.conftest import address, group_hosts, secret, setting

LB_HOSTS = group_hosts("lb")
REDIS_HOSTS = group_hosts("redis")
DATA_HOSTS = sorted({h for g in ("redis", "mongodb", "etcd") for h in group_hosts(g)})


# -- the floating address ---------------------------------------------------------------------


def vip() -> str | None:
    """The front end's floating address (None with a single LB: no keepalived)."""
    if len(LB_HOSTS) < 2:
        return None
    return str(setting(LB_HOSTS[0], "keepalived_virtual_ipaddress"))


def vip_holders(on: Any, running: Any) -> list[str]:
    """LB hosts that have the floating address on an interface now."""
    address_ = vip()
    if address_ is None:
        return []
    return [
        h
        for h in LB_HOSTS
        if running(h) and f" {address_}/" in on(h, "ip -4 -o addr show", check=False)
    ]


# -- Redis: the primary as each member and each Sentinel sees it ------------------------------


def sentinel_port() -> int:
    return int(setting(REDIS_HOSTS[0], "redis_sentinel_port"))


def sentinel_master_name() -> str:
    return str(setting(REDIS_HOSTS[0], "redis_sentinel_master_name"))


def with_sentinels() -> bool:
    """Sentinel runs with three Redis hosts or more (roles/redis redis_sentinel_enabled)."""
    return len(REDIS_HOSTS) >= 3


def _client(host: str, port: int, password: str) -> redis.Redis:
    return redis.Redis(
        host=address(host),
        port=port,
        password=password,
        socket_timeout=2,
        socket_connect_timeout=1.5,
        decode_responses=True,
    )


def redis_roles() -> dict[str, dict[str, Any]]:
    """Redis host -> INFO replication as the member itself reports it ({} when it does not
    answer)."""
    out: dict[str, dict[str, Any]] = {}
    for h in REDIS_HOSTS:
        client = _client(h, int(setting(h, "redis_port")), secret("redis_password"))
        try:
            out[h] = dict(client.info("replication"))
        except (redis.RedisError, OSError):
            out[h] = {}
        finally:
            client.close()
    return out


def sentinel_views() -> dict[str, tuple[str, int] | None]:
    """Sentinel host -> the primary's address it reports (None when it does not answer)."""
    out: dict[str, tuple[str, int] | None] = {}
    for h in REDIS_HOSTS:
        client = _client(h, sentinel_port(), secret("redis_sentinel_password"))
        try:
            found = client.execute_command(
                "SENTINEL", "get-master-addr-by-name", sentinel_master_name()
            )
            out[h] = (str(found[0]), int(found[1])) if found else None
        except (redis.RedisError, OSError):
            out[h] = None
        finally:
            client.close()
    return out


def host_of(addr: str) -> str | None:
    return next((h for h in REDIS_HOSTS if address(h) == addr), None)


def redis_primary() -> str | None:
    """The host a majority of Sentinels name as primary (the single Redis without Sentinel)."""
    if not with_sentinels():
        return REDIS_HOSTS[0]
    views = [v for v in sentinel_views().values() if v is not None]
    for view in views:
        if views.count(view) * 2 > len(REDIS_HOSTS):
            return host_of(view[0])
    return None


def redis_problems() -> list[str]:
    """Anything short of: one primary, every other member its replica with the link up, every
    Sentinel naming that primary."""
    roles = redis_roles()
    masters = [h for h, info in roles.items() if info.get("role") == "master"]
    found = [f"Redis {h} does not answer" for h, info in roles.items() if not info]
    if len(masters) != 1:
        return [*found, f"Redis: {len(masters)} members say they are primary: {masters}"]
    if not with_sentinels():
        return found
    primary = masters[0]
    for h, info in roles.items():
        if h == primary or not info:
            continue
        if info.get("role") != "slave" or info.get("master_host") != address(primary):
            found.append(f"Redis {h} is not a replica of {primary}: {info.get('master_host')}")
        elif info.get("master_link_status") != "up":
            found.append(f"Redis {h}: link to {primary} {info.get('master_link_status')}")
    for h, view in sentinel_views().items():
        if view is None or view[0] != address(primary):
            found.append(f"Sentinel on {h} names {view} as primary, not {primary}")
    return found


# -- a partition of one host from some others -------------------------------------------------

PARTITION_TABLE = "clusterkit_chaos"


def partition_command(peers: list[str]) -> str:
    """nft commands that drop every packet between this host and `peers` (a table of its own,
    so the host firewall's table is left alone; deleting the table heals)."""
    addrs = ", ".join(address(p) for p in peers)
    return (
        f"nft add table inet {PARTITION_TABLE} && "
        f"nft add chain inet {PARTITION_TABLE} in '{{ type filter hook input priority -10; }}' && "
        f"nft add chain inet {PARTITION_TABLE} out '{{ type filter hook output priority -10; }}' "
        f"&& nft add rule inet {PARTITION_TABLE} in ip saddr '{{ {addrs} }}' drop && "
        f"nft add rule inet {PARTITION_TABLE} out ip daddr '{{ {addrs} }}' drop"
    )


HEAL_COMMAND = f"nft delete table inet {PARTITION_TABLE} 2>/dev/null || true"


# -- requests through the front end, each acknowledged one remembered -------------------------


@dataclass
class Outcome:
    sent: float
    done: float
    ok: bool
    request_id: str | None = None
    error: str | None = None


@dataclass
class RequestProbe:
    """`clients` threads POST /api/requests through `url` back to back, each on a connection of
    its own, and keep every outcome: which request ids the API acknowledged (200) and when
    requests failed. A failed request is not retried (it was not acknowledged)."""

    url: str
    clients: int = 4
    timeout: float = 5.0
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def _run(self, n: int) -> None:
        with httpx.Client(timeout=self.timeout) as client:
            while not self._stop.is_set():
                sent = time.time()
                try:
                    r = client.post(f"{self.url}/api/requests", json={"payload": {"probe": n}})
                    ok = r.status_code == 200
                    outcome = Outcome(
                        sent,
                        time.time(),
                        ok,
                        r.json().get("id") if ok else None,
                        None if ok else f"{r.status_code}",
                    )
                except httpx.HTTPError as exc:
                    outcome = Outcome(sent, time.time(), False, None, type(exc).__name__)
                with self._lock:
                    self.outcomes.append(outcome)
                self._stop.wait(0.02)

    def __enter__(self) -> RequestProbe:
        for n in range(self.clients):
            thread = threading.Thread(target=self._run, args=(n,), name=f"probe-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 5)

    def snapshot(self) -> list[Outcome]:
        with self._lock:
            return list(self.outcomes)

    def acknowledged(self) -> list[str]:
        return [o.request_id for o in self.snapshot() if o.ok and o.request_id]

    def failures(self, start: float = 0.0, end: float = float("inf")) -> list[Outcome]:
        return [o for o in self.snapshot() if not o.ok and start <= o.sent <= end]

    def succeeded_since(self, t: float) -> bool:
        return any(o.ok and o.sent >= t for o in self.snapshot())

    def outage_s(self, after: float) -> float:
        """First failure to first success: from the sending of the first request (sent at or
        after `after`) that failed to the answer of the first request sent after it that
        succeeded; 0.0 when nothing failed."""
        outcomes = sorted(self.snapshot(), key=lambda o: o.sent)
        first = next((o for o in outcomes if not o.ok and o.sent >= after), None)
        if first is None:
            return 0.0
        back = next((o for o in outcomes if o.ok and o.sent >= first.sent), None)
        end = back.done if back is not None else max(o.done for o in outcomes)
        return round(end - first.sent, 2)

    def figures(self, after: float) -> dict[str, Any]:
        outcomes = self.snapshot()
        return {
            "probe_requests": len(outcomes),
            "probe_failed": sum(1 for o in outcomes if not o.ok),
            "failover_s": self.outage_s(after),
        }


def missing_requests(mongo: pymongo.database.Database[dict[str, Any]], ids: list[str]) -> list[str]:
    """Acknowledged request ids that MongoDB does not have (read from the primary)."""
    found: set[str] = set()
    for start in range(0, len(ids), 1000):
        chunk = ids[start : start + 1000]
        found |= {d["_id"] for d in mongo.requests.find({"_id": {"$in": chunk}}, {"_id": 1})}
    return [i for i in ids if i not in found]
