"""Configuration, read only from environment variables (see README.md for the full table)."""

from __future__ import annotations

import re
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

Mode = Literal["standalone", "master", "worker"]
WorkMode = Literal["sleep", "cpu"]
RequestWriteConcern = Literal["majority", "1"]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
_LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")


class ConfigError(Exception):
    """A missing or invalid environment variable."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name}: {problem}")
        self.name = name
        self.problem = problem


@dataclass(frozen=True)
class Config:
    mode: Mode
    node_id: str
    worker_id: str
    bind_address: str = "0.0.0.0"
    server_port: int = 8180
    master_server_ip: str = "127.0.0.1"
    master_server_port: int = 7001
    master_health_port: int = 7002
    redis_host: str = "127.0.0.1"
    redis_port: int = 6379
    redis_password: str | None = field(default=None, repr=False)
    redis_db: int = 0
    # Sentinel mode (REDIS_SENTINELS set): the primary is asked from these Sentinels and
    # REDIS_HOST/REDIS_PORT are unused.
    redis_sentinels: tuple[tuple[str, int], ...] = ()
    redis_sentinel_master: str = "clusterkit"
    redis_sentinel_password: str | None = field(default=None, repr=False)
    # A job submit is acknowledged only once this many replicas have it (WAIT), within
    # redis_wait_timeout_ms; 0 = the primary alone (a failover can lose the newest jobs).
    redis_wait_replicas: int = 0
    redis_wait_timeout_ms: int = 1000
    mongodb_uri: str = "mongodb://127.0.0.1:27017"
    mongodb_database: str = "clusterkit"
    # Write concern of the request audit documents: "majority" (survives a failover) or "1"
    # (acknowledged by the primary's journal; a failover can roll back the newest ones).
    # Applied jobs are always written with "majority".
    request_write_concern: RequestWriteConcern = "majority"
    etcd_endpoints: tuple[str, ...] = ("http://127.0.0.1:2379",)
    etcd_user: str | None = None
    etcd_password: str | None = field(default=None, repr=False)
    etcd_prefix: str = "/clusterkit"
    lock_ttl_s: int = 10
    master_lock_wait: bool = False
    worker_concurrency: int = 1
    service_time_ms: int = 66
    work_mode: WorkMode = "sleep"
    grpc_token: str = field(default="", repr=False)
    # False when MODE=standalone made up a random token (no GRPC_TOKEN): admin endpoints are off
    grpc_token_configured: bool = True
    max_body_bytes: int = 65536
    max_jobs_in_flight_per_worker: int = 4
    job_ack_timeout_s: float = 30.0
    drain_timeout_s: float = 30.0
    drain_grace_s: float = 0.0
    log_level: str = "INFO"

    @property
    def master_target(self) -> str:
        return f"{self.master_server_ip}:{self.master_server_port}"


def _str(env: Mapping[str, str], name: str, default: str | None = None) -> str | None:
    value = env.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip()


def _required(env: Mapping[str, str], name: str) -> str:
    value = _str(env, name)
    if value is None:
        raise ConfigError(name, "is required but not set")
    return value


def _int(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = _str(env, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(name, f"must be an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise ConfigError(name, f"must be between {lo} and {hi}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, lo: float, hi: float) -> float:
    raw = _str(env, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(name, f"must be a number, got {raw!r}") from None
    if not lo <= value <= hi:
        raise ConfigError(name, f"must be between {lo:g} and {hi:g}, got {raw}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = _str(env, name)
    if raw is None:
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(name, f"must be a boolean (1/0, true/false), got {raw!r}")


def _name(env: Mapping[str, str], name: str, value: str) -> str:
    if not _NAME_RE.match(value):
        raise ConfigError(name, f"must match {_NAME_RE.pattern}, got {value!r}")
    return value


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    return _int(env, name, default, 1, 65535)


def _endpoints(env: Mapping[str, str]) -> tuple[str, ...]:
    raw = _str(env, "ETCD_ENDPOINTS", "http://127.0.0.1:2379")
    assert raw is not None
    urls = tuple(u.strip().rstrip("/") for u in raw.split(",") if u.strip())
    if not urls:
        raise ConfigError("ETCD_ENDPOINTS", "must list at least one URL")
    for url in urls:
        if not re.match(r"^https?://[^/\s]+$", url):
            raise ConfigError(
                "ETCD_ENDPOINTS", f"must be comma-separated http(s)://host:port URLs, got {url!r}"
            )
    return urls


def _sentinels(env: Mapping[str, str]) -> tuple[tuple[str, int], ...]:
    raw = _str(env, "REDIS_SENTINELS")
    if raw is None:
        return ()
    out = []
    for item in (i.strip() for i in raw.split(",")):
        host, sep, port = item.rpartition(":")
        if not item or not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ConfigError(
                "REDIS_SENTINELS", f"must be comma-separated host:port pairs, got {item!r}"
            )
        out.append((host, int(port)))
    return tuple(out)


def load_etcd_only(env: Mapping[str, str]) -> tuple[tuple[str, ...], str | None, str | None, str]:
    """The subset used by the ``workers`` subcommand."""
    user = _str(env, "ETCD_USER")
    password = env.get("ETCD_PASSWORD") or None
    if user and password is None:
        raise ConfigError("ETCD_PASSWORD", "is required when ETCD_USER is set")
    prefix = _prefix(env)
    return _endpoints(env), user, password, prefix


def _prefix(env: Mapping[str, str]) -> str:
    prefix = _str(env, "ETCD_PREFIX", "/clusterkit")
    assert prefix is not None
    if not prefix.startswith("/") or (prefix.endswith("/") and prefix != "/"):
        raise ConfigError(
            "ETCD_PREFIX", f"must start with '/' and not end with '/', got {prefix!r}"
        )
    return prefix.rstrip("/")


def load_config(env: Mapping[str, str]) -> Config:
    """Parse and validate the environment. Raises ConfigError naming the first bad variable."""
    mode_raw = (_str(env, "MODE", "standalone") or "").lower()
    if mode_raw not in ("standalone", "master", "worker"):
        raise ConfigError("MODE", f"must be one of standalone, master, worker; got {mode_raw!r}")
    mode: Mode = mode_raw  # type: ignore[assignment]

    node_id = _name(env, "NODE_ID", _required(env, "NODE_ID"))
    server_port = _port(env, "SERVER_PORT", 8180)
    worker_id = _str(env, "WORKER_ID") or f"{socket.gethostname()}-{server_port}"
    worker_id = _name(env, "WORKER_ID", worker_id)

    if mode == "worker":
        master_ip = _required(env, "MASTER_SERVER_IP")
    else:
        master_ip = _str(env, "MASTER_SERVER_IP", "127.0.0.1") or "127.0.0.1"

    token = _str(env, "GRPC_TOKEN")
    token_configured = token is not None
    if token is None:
        if mode != "standalone":
            raise ConfigError("GRPC_TOKEN", f"is required in MODE={mode}")
        token = secrets.token_hex(16)

    etcd_endpoints, etcd_user, etcd_password, etcd_prefix = load_etcd_only(env)

    work_mode = (_str(env, "WORK_MODE", "sleep") or "sleep").lower()
    if work_mode not in ("sleep", "cpu"):
        raise ConfigError("WORK_MODE", f"must be sleep or cpu, got {work_mode!r}")

    log_level = (_str(env, "LOG_LEVEL", "INFO") or "INFO").upper()
    if log_level not in _LOG_LEVELS:
        raise ConfigError(
            "LOG_LEVEL", f"must be one of {', '.join(_LOG_LEVELS)}, got {log_level!r}"
        )

    request_wc = (_str(env, "REQUEST_WRITE_CONCERN", "majority") or "majority").lower()
    if request_wc not in ("majority", "1"):
        raise ConfigError("REQUEST_WRITE_CONCERN", f"must be majority or 1, got {request_wc!r}")

    mongodb_uri = _str(env, "MONGODB_URI", "mongodb://127.0.0.1:27017") or ""
    if not mongodb_uri.startswith(("mongodb://", "mongodb+srv://")):
        raise ConfigError("MONGODB_URI", "must start with mongodb:// or mongodb+srv://")

    return Config(
        mode=mode,
        node_id=node_id,
        worker_id=worker_id,
        bind_address=_str(env, "BIND_ADDRESS", "0.0.0.0") or "0.0.0.0",
        server_port=server_port,
        master_server_ip=master_ip,
        master_server_port=_port(env, "MASTER_SERVER_PORT", 7001),
        master_health_port=_port(env, "MASTER_HEALTH_PORT", 7002),
        redis_host=_str(env, "REDIS_HOST", "127.0.0.1") or "127.0.0.1",
        redis_port=_port(env, "REDIS_PORT", 6379),
        redis_password=env.get("REDIS_PASSWORD") or None,
        redis_db=_int(env, "REDIS_DB", 0, 0, 1023),
        redis_sentinels=_sentinels(env),
        redis_sentinel_master=_name(
            env,
            "REDIS_SENTINEL_MASTER",
            _str(env, "REDIS_SENTINEL_MASTER", "clusterkit") or "",
        ),
        redis_sentinel_password=env.get("REDIS_SENTINEL_PASSWORD") or None,
        redis_wait_replicas=_int(env, "REDIS_WAIT_REPLICAS", 0, 0, 100),
        redis_wait_timeout_ms=_int(env, "REDIS_WAIT_TIMEOUT_MS", 1000, 1, 60_000),
        mongodb_uri=mongodb_uri,
        mongodb_database=_name(
            env, "MONGODB_DATABASE", _str(env, "MONGODB_DATABASE", "clusterkit") or ""
        ),
        request_write_concern=request_wc,  # type: ignore[arg-type]
        etcd_endpoints=etcd_endpoints,
        etcd_user=etcd_user,
        etcd_password=etcd_password,
        etcd_prefix=etcd_prefix,
        lock_ttl_s=_int(env, "LOCK_TTL_S", 10, 2, 3600),
        master_lock_wait=_bool(env, "MASTER_LOCK_WAIT", False),
        worker_concurrency=_int(env, "WORKER_CONCURRENCY", 1, 1, 10000),
        service_time_ms=_int(env, "SERVICE_TIME_MS", 66, 0, 600_000),
        work_mode=work_mode,  # type: ignore[arg-type]
        grpc_token=token,
        grpc_token_configured=token_configured,
        max_body_bytes=_int(env, "MAX_BODY_BYTES", 65536, 64, 64 * 1024 * 1024),
        max_jobs_in_flight_per_worker=_int(env, "MAX_JOBS_IN_FLIGHT_PER_WORKER", 4, 1, 10000),
        job_ack_timeout_s=_float(env, "JOB_ACK_TIMEOUT_S", 30.0, 0.1, 86400.0),
        drain_timeout_s=_float(env, "DRAIN_TIMEOUT_S", 30.0, 0.0, 3600.0),
        drain_grace_s=_float(env, "DRAIN_GRACE_S", 0.0, 0.0, 3600.0),
        log_level=log_level,
    )
