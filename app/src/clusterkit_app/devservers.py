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
