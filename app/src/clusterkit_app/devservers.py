"""Throw-away local servers (redis-server, mongod, etcd) and app processes, on 127.0.0.1 with free
ports in temporary directories. Used by the integration tests and the benchmark.

Binaries: ``redis-server`` on PATH (or redis-tools' /usr/bin/redis-check-rdb, run through a symlink
named redis-server); mongod and etcd under the cache dir filled by ``scripts/test-deps.sh``
($CLUSTERKIT_CACHE, else ${XDG_CACHE_HOME:-~/.cache}/clusterkit), or ``MONGOD_BIN``/``ETCD_BIN``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any


class MissingBinary(RuntimeError):
    pass


def cache_dir() -> Path:
    if os.environ.get("CLUSTERKIT_CACHE"):
        return Path(os.environ["CLUSTERKIT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "clusterkit"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception:
            pass
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def find_redis_server(workdir: Path) -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    check = shutil.which("redis-check-rdb") or "/usr/bin/redis-check-rdb"
    if not os.path.exists(check):
        raise MissingBinary("redis-server not found: run app/scripts/test-deps.sh (redis-tools)")
    link = workdir / "redis-server"
    if not link.exists():
        link.symlink_to(check)  # the binary picks its role from argv[0]
    return str(link)


def find_binary(env_name: str, relative: str) -> str:
    if os.environ.get(env_name):
        return os.environ[env_name]
    path = cache_dir() / relative
    if path.exists():
        return str(path)
    name = Path(relative).name
    found = shutil.which(name)
    if found:
        return found
    raise MissingBinary(f"{name} not found ({path}): run app/scripts/test-deps.sh")


class Process:
    """A child process in its own process group, with its output in a log file."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        workdir: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = argv
        self.log_path = workdir / f"{name}.log"
        self._log: IO[bytes] = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            argv,
            cwd=workdir,
            env=dict(env) if env is not None else None,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        if not self._log.closed:
            self._log.close()
        return self.proc.returncode


class RedisServer:
    def __init__(self, workdir: Path, password: str | None = "redis-test-pw") -> None:
        self.port = free_port()
        self.password = password
        argv = [
            find_redis_server(workdir),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
            "--daemonize",
            "no",
            "--databases",
            "1024",
        ]
        if password:
            argv += ["--requirepass", password]
        self.process = Process("redis", argv, workdir)
        wait_until(lambda: port_open(self.port), 15, "redis-server")

    def env(self) -> dict[str, str]:
        env = {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(self.port)}
        if self.password:
            env["REDIS_PASSWORD"] = self.password
        return env

    def stop(self) -> None:
        self.process.stop()


class RedisSentinelGroup:
    """A primary, replicas and Sentinels on 127.0.0.1, all with passwords, like the redis role
    deploys them (min-replicas-to-write 1). Members are indexed 0..n-1; member 0 starts as
    primary. Each runs in its own directory; Sentinels on their own, writable config files."""

    def __init__(
        self,
        workdir: Path,
        members: int = 3,
        sentinels: int = 3,
        password: str = "redis-test-pw",
        sentinel_password: str = "sentinel-test-pw",
        master_name: str = "clusterkit",
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 4000,
    ) -> None:
        self.workdir = workdir
        self.binary = find_redis_server(workdir)
        self.password = password
        self.sentinel_password = sentinel_password
        self.master_name = master_name
        self.ports = [free_port() for _ in range(members)]
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.members: list[Process | None] = [None] * members
        self.sentinels: list[Process] = []
        for i in range(members):
            self.start_member(i, replica_of=None if i == 0 else self.ports[0])
        for i, port in enumerate(self.sentinel_ports):
            d = workdir / f"sentinel-{i}"
            d.mkdir(parents=True, exist_ok=True)
            conf = d / "sentinel.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {d}\n"
                f'requirepass "{sentinel_password}"\n'
                f"sentinel monitor {master_name} 127.0.0.1 {self.ports[0]} 2\n"
                f'sentinel auth-pass {master_name} "{password}"\n'
                f"sentinel down-after-milliseconds {master_name} {down_after_ms}\n"
                f"sentinel failover-timeout {master_name} {failover_timeout_ms}\n"
                f"sentinel parallel-syncs {master_name} 1\n"
            )
            self.sentinels.append(
                Process(f"sentinel-{i}", [self.binary, str(conf), "--sentinel"], d)
            )
        for port in self.sentinel_ports:
            wait_until(lambda p=port: port_open(p), 15, "redis-sentinel")
        self.wait_healthy()

    def start_member(self, i: int, replica_of: int | None) -> None:
        d = self.workdir / f"redis-{i}"
        d.mkdir(parents=True, exist_ok=True)
        argv = [
            self.binary,
            "--port",
            str(self.ports[i]),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(d),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--requirepass",
            self.password,
            "--masterauth",
            self.password,
            "--min-replicas-to-write",
            "1",
            "--min-replicas-max-lag",
            "10",
        ]
        if replica_of is not None:
            argv += ["--replicaof", "127.0.0.1", str(replica_of)]
        self.members[i] = Process(f"redis-{i}", argv, d)
        wait_until(lambda: port_open(self.ports[i]), 15, "redis-server")

    def client(self, port: int, sentinel: bool = False) -> Any:
        import redis

        return redis.Redis(
            host="127.0.0.1",
            port=port,
            password=self.sentinel_password if sentinel else self.password,
            socket_timeout=2,
            decode_responses=True,
        )

    def _sentinel_view(self, index: int) -> Any:
        with self.client(self.sentinel_ports[index], sentinel=True) as c:
            return c.sentinel_master(self.master_name), c.sentinel_slaves(self.master_name)

    def primary_port(self) -> int:
        """The primary's port as a majority of the Sentinels report it."""
        seen = []
        for port in self.sentinel_ports:
            with self.client(port, sentinel=True) as c:
                seen.append(int(c.sentinel_get_master_addr_by_name(self.master_name)[1]))
        return max(set(seen), key=seen.count)

    def primary_index(self) -> int:
        return self.ports.index(self.primary_port())

    def role(self, i: int) -> str:
        with self.client(self.ports[i]) as c:
            return str(c.execute_command("ROLE")[0])

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Every Sentinel agrees on a primary that is one, with every other member replicating
        and every other Sentinel known."""
        n_replicas = sum(m is not None for m in self.members) - 1
        n_sentinels = len(self.sentinel_ports)

        def healthy() -> bool:
            views = [self._sentinel_view(i) for i in range(n_sentinels)]
            ports = {int(master["port"]) for master, _ in views}
            if len(ports) != 1:
                return False
            port = ports.pop()
            with self.client(port) as c:
                info = c.info("replication")
            if info.get("role") != "master" or info.get("connected_slaves") != n_replicas:
                return False
            for master, replicas in views:
                if master["num-other-sentinels"] != n_sentinels - 1:
                    return False
                if master["is_sdown"] or master["is_odown"]:
                    return False
                live = [
                    r for r in replicas if not r["is_sdown"] and r["master-link-status"] == "ok"
                ]
                if len(live) < n_replicas:
                    return False
            return True

        wait_until(healthy, timeout, "a healthy Redis Sentinel group", interval=0.2)

    def kill(self, i: int) -> None:
        """kill -9 of member i (its process group)."""
        proc = self.members[i]
        assert proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
        proc.stop()
        self.members[i] = None

    def restart(self, i: int) -> None:
        """Start a stopped member again as a replica of the current primary."""
        self.start_member(i, replica_of=self.primary_port())

    def planned_failover(self, pause_ms: int = 20000) -> None:
        """A failover that loses no acknowledged write while clients keep writing: writes to
        the primary are paused (clients wait), so every replica has all of them; Sentinel
        promotes one; the old primary is made its replica at once (what Sentinel does a few
        seconds later by itself); then the paused writes resume there, get READONLY and the
        clients move on to the new primary. A bare SENTINEL FAILOVER leaves the old primary
        writable for ~10 s, replicating to a replica not yet moved: writes acknowledged in that
        window are lost (the app test measured hundreds)."""
        old = self.primary_index()
        with self.client(self.ports[old]) as c:
            c.execute_command("CLIENT", "PAUSE", pause_ms, "WRITE")
            try:
                with self.client(self.sentinel_ports[0], sentinel=True) as s:
                    s.execute_command("SENTINEL", "FAILOVER", self.master_name)
                wait_until(lambda: self.primary_index() != old, 20, "a promoted replica")
                c.execute_command("REPLICAOF", "127.0.0.1", self.primary_port())
            finally:
                c.execute_command("CLIENT", "UNPAUSE")

    def env(self) -> dict[str, str]:
        return {
            "REDIS_SENTINELS": ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports),
            "REDIS_SENTINEL_MASTER": self.master_name,
            "REDIS_SENTINEL_PASSWORD": self.sentinel_password,
            "REDIS_PASSWORD": self.password,
            "REDIS_WAIT_REPLICAS": "1",
        }

    def stop(self) -> None:
        for proc in self.sentinels + [m for m in self.members if m is not None]:
            proc.stop()


class MongoServer:
    """A one-member replica set (rs0), so that majority writes and transactions work."""

    def __init__(self, workdir: Path) -> None:
        from pymongo import MongoClient

        self.port = free_port()
        dbpath = workdir / "mongo-data"
        dbpath.mkdir(parents=True, exist_ok=True)
        argv = [
            find_binary("MONGOD_BIN", "mongodb/bin/mongod"),
            "--replSet",
            "rs0",
            "--port",
            str(self.port),
            "--bind_ip",
            "127.0.0.1",
            "--dbpath",
            str(dbpath),
            "--wiredTigerCacheSizeGB",
            "0.25",
            "--nounixsocket",
            "--quiet",
            "--setParameter",
            "diagnosticDataCollectionEnabled=false",
        ]
        self.process = Process("mongod", argv, workdir)
        wait_until(lambda: port_open(self.port), 60, "mongod")
        client: MongoClient[dict[str, Any]] = MongoClient(
            f"mongodb://127.0.0.1:{self.port}/?directConnection=true",
            serverSelectionTimeoutMS=10000,
        )
        try:
            client.admin.command(
                "replSetInitiate",
                {"_id": "rs0", "members": [{"_id": 0, "host": f"127.0.0.1:{self.port}"}]},
            )
            wait_until(
                lambda: client.admin.command("hello").get("isWritablePrimary"), 60, "mongod primary"
            )
        finally:
            client.close()

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?replicaSet=rs0"

    def stop(self) -> None:
        self.process.stop(timeout=20)


def _etcd_post(url: str, body: dict[str, Any], token: str | None = None) -> dict[str, Any]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = token
    req = urllib.request.Request(url, json.dumps(body).encode(), headers)
    with urllib.request.urlopen(req, timeout=5) as resp:
        data: dict[str, Any] = json.loads(resp.read())
    return data


class EtcdServer:
    def __init__(self, workdir: Path, auth: bool = True) -> None:
        self.port = free_port()
        peer = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        peer_url = f"http://127.0.0.1:{peer}"
        argv = [
            find_binary("ETCD_BIN", "etcd/usr/bin/etcd"),
            "--name",
            "n1",
            "--data-dir",
            str(workdir / "etcd-data"),
            "--listen-client-urls",
            self.url,
            "--advertise-client-urls",
            self.url,
            "--listen-peer-urls",
            peer_url,
            "--initial-advertise-peer-urls",
            peer_url,
            "--initial-cluster",
            f"n1={peer_url}",
            "--log-level",
            "warn",
        ]
        self.process = Process("etcd", argv, workdir)
        wait_until(lambda: _etcd_post(self.url + "/v3/kv/range", {"key": "eA=="}), 30, "etcd")
        self.user: str | None = None
        self.password: str | None = None
        if auth:
            self.enable_auth("root", "etcd-test-pw")

    def enable_auth(self, user: str, password: str) -> None:
        _etcd_post(self.url + "/v3/auth/role/add", {"name": "root"})
        _etcd_post(self.url + "/v3/auth/user/add", {"name": user, "password": password})
        _etcd_post(self.url + "/v3/auth/user/grant", {"user": user, "role": "root"})
        _etcd_post(self.url + "/v3/auth/enable", {})
        self.user, self.password = user, password

    def _token(self) -> str | None:
        if not self.user:
            return None
        body = {"name": self.user, "password": self.password}
        token: str = _etcd_post(self.url + "/v3/auth/authenticate", body)["token"]
        return token

    def revoke(self, lease: int) -> None:
        _etcd_post(self.url + "/v3/lease/revoke", {"ID": str(lease)}, self._token())

    def get(self, key: str) -> str | None:
        token = self._token()
        data = _etcd_post(
            self.url + "/v3/kv/range", {"key": base64.b64encode(key.encode()).decode()}, token
        )
        kvs = data.get("kvs") or []
        return base64.b64decode(kvs[0]["value"]).decode() if kvs else None

    def env(self) -> dict[str, str]:
        env = {"ETCD_ENDPOINTS": self.url}
        if self.user and self.password:
            env["ETCD_USER"] = self.user
            env["ETCD_PASSWORD"] = self.password
        return env

    def stop(self) -> None:
        self.process.stop()


class AppProcess(Process):
    """``python -m clusterkit_app`` with the given environment."""

    def __init__(self, name: str, workdir: Path, env: Mapping[str, str]) -> None:
        full = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
        full.update(env)
        super().__init__(name, [sys.executable, "-m", "clusterkit_app"], workdir, full)

    def wait_healthy(self, port: int, timeout: float = 30.0) -> None:
        def healthy() -> bool:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited {self.proc.returncode}:\n{self.log()}")
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                return bool(r.status == 200)

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if healthy():
                    return
            except RuntimeError:
                raise
            except Exception:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not healthy after {timeout}s:\n{self.log()[-3000:]}")
