"""The redis role for the pyinfra engine: one primary, replicas and a Sentinel on each host
of group redis (a single Redis, no Sentinel, when the group has one host), from the same
templates, variables and helper scripts as roles/redis. Redis starts through
clusterkit-redis-ha (as a replica of the current primary); members whose config is newer than
their running server are restarted one at a time, the primary first, each serving again
before the next one stops; Sentinel's own file is written once and its monitoring settings
are enforced at run time. deploy.py calls it on the hosts of group redis.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Generator
from typing import Any

from pyinfra import host
from pyinfra.api import FunctionCommand, deploy

from pyinfra_deploy.ops import Command, ensure, installed_file, nothing, run
from pyinfra_deploy.roles import Vars, apt, dropin, firewall_rules, q, service, template
from pyinfra_deploy.templating import render
from pyinfra_deploy.variables import ROOT

HA = "/usr/local/sbin/clusterkit-redis-ha"
VALIDATE = "/usr/local/sbin/clusterkit-redis-validate"
SERVER_FILES = [
    "/etc/redis/redis.conf",
    "/etc/redis/redis-auth.conf",
    "/etc/systemd/system/redis-server.service.d/clusterkit-ha.conf",
    "/etc/systemd/system/redis-server.service.d/clusterkit-container.conf",
]
SENTINEL_FILES = [
    "/etc/systemd/system/redis-sentinel.service.d/clusterkit-ha.conf",
    "/etc/systemd/system/redis-sentinel.service.d/clusterkit-container.conf",
]
# What the hosts found while this run executes (the operations run in lockstep on every
# host, so an operation reads what all hosts recorded in the ones before it).
found: dict[str, Any] = {"primary": None, "stale": {}}


def unchanged() -> Generator[Command, None, None]:
    """The body of an operation whose check only looks (and never asks for a change)."""
    yield from ()


def helper(command: str) -> dict[str, Any]:
    """clusterkit-redis-ha COMMAND on the current host; its JSON answer."""
    ok, out = run(f"{HA} {command}")
    try:
        answer = json.loads("\n".join(out) or "{}")
    except ValueError:
        answer = {}
    return {**answer, "ok": ok}


def primary(v: Vars) -> str:
    """The primary a majority of the running Sentinels report, else redis_initial_primary.
    Asked once per run (Ansible: run_once)."""
    if found["primary"] is None:
        answer = helper("primary")
        initial = f"{v['redis_initial_primary_address']}:{v['redis_initial_primary_port']}"
        found["primary"] = answer.get("primary") or initial
    return str(found["primary"])


def reported(command: str) -> Callable[[], Generator[Command, None, None]]:
    """An operation body for a helper command that changed the host itself (it said so)."""
    return lambda: iter([FunctionCommand(nothing, (command,), {})])


def must(name: str, command: str, what: str) -> None:
    """A helper command that waits for something; the operation fails when it times out."""
    ensure(
        name=name,
        check=lambda: not run(f"{HA} {command}")[0],
        apply=lambda: iter([f"echo {q(what + ' not ready in time')} >&2; exit 1"]),
    )


def one_at_a_time(v: Vars, kind: str, what: str, restart: list[str], primary_first: bool) -> None:
    """Restart the group's stale members of `kind`, one operation per member so that no two
    restart at once, the primary first when asked to."""
    members = list(v["redis_group_hosts"])

    def order() -> list[str]:
        stale = [h for h in members if found["stale"].get((kind, h))]
        if not primary_first:
            return stale
        me = {h: world_address(v, h) == primary(v) for h in stale}
        return [h for h in stale if me[h]] + [h for h in stale if not me[h]]

    for i in host.loop(range(len(members))):
        ensure(
            name=f"Restart {what} ({i + 1} of {len(members)}, when its config changed)",
            check=lambda i=i: i < len(order()) and order()[i] == v.name,
            apply=lambda: iter(restart),
        )


def world_address(v: Vars, name: str) -> str:
    other = v.world[name]
    return f"{other['redis_bind_address']}:{other['redis_port']}"


def record_stale(kind: str, v: Vars, unit: str, paths: list[str]) -> None:
    """clusterkit-redis-ha stale: decided from the files, so a run that failed after writing
    them still restarts next time. Changes nothing itself."""

    def look() -> bool:
        answer = helper(f"stale {unit} {' '.join(paths)}")
        found["stale"][(kind, v.name)] = bool(answer.get("stale", True))
        return False

    ensure(name=f"Look for a config newer than the running {unit}", check=look, apply=unchanged)


@deploy("redis")
def redis(v: Vars) -> None:
    timeout = int(v["redis_start_timeout"])
    sentinel = bool(v.render("{{ redis_sentinel_enabled | bool }}"))

    # Install: the container drop-in before the package (its postinst starts the unit).
    dropin(v, "redis-server.service", v["redis_container_dropin"], restart_if_installed=True)
    apt(list(v["redis_packages"]), "Install the Redis packages")
    for name in ("clusterkit-redis-validate", "clusterkit-redis-ha"):
        installed_file(
            name=f"Install /usr/local/sbin/{name}",
            dest=f"/usr/local/sbin/{name}",
            src=ROOT / "roles/redis/files" / name,
            mode="0755",
        )

    # Configure.
    template(v, "redis/ha.conf.j2", "/etc/redis/clusterkit-ha.conf", mode="0640", group="redis")
    ensure(
        name="Ask the Sentinels for the current primary",
        check=lambda: not primary(v),
        apply=unchanged,
    )
    check = f"{VALIDATE} %s {int(v['redis_validate_grace'])}"
    for name, dest in (("auth", "redis-auth"), ("redis", "redis")):
        template(
            v,
            f"redis/{name}.conf.j2",
            f"/etc/redis/{dest}.conf",
            mode="0640",
            group="redis",
            validate=check,
        )
    # ExecStart through clusterkit-redis-ha, /etc/redis read-only for Redis.
    dropin(
        v, "redis-server.service", v["redis_ha_dropin"], name="clusterkit-ha", container_only=False
    )
    record_stale("redis", v, "redis-server.service", SERVER_FILES)
    firewall_rules(v, "redis", list(v["redis_firewall_rules"]))

    # Run.
    service("redis-server.service")
    one_at_a_time(
        v,
        "redis",
        "redis-server",
        ["systemctl restart redis-server.service", f"{HA} wait {timeout}"],
        primary_first=True,
    )
    if sentinel:
        ensure(
            name="Make the other members replicas of the initial primary (before Sentinel)",
            check=lambda: bool(helper("replication").get("changed")),
            apply=reported("replication"),
        )
    must("Wait until Redis serves", f"wait {timeout}", "redis")
    if sentinel:
        redis_sentinel(v, timeout)


def redis_sentinel(v: Vars, timeout: int) -> None:
    unit = "redis-sentinel.service"
    dropin(v, unit, v["redis_container_dropin"])
    dropin(v, unit, v["redis_sentinel_dropin"], name="clusterkit-ha", container_only=False)

    def first_config() -> str:
        host_, _, port = primary(v).rpartition(":")
        return render(
            "redis/sentinel.conf.j2", v, redis__primary_host=host_, redis__primary_port=port
        )

    installed_file(
        name="Write the first Sentinel configuration",
        dest=v["redis_sentinel_conf"],
        content=first_config,
        mode="0640",
        user="redis",
        group="redis",
        validate=f"{VALIDATE} %s {int(v['redis_validate_grace'])} sentinel",
        force=False,
    )
    apt(list(v["redis_sentinel_packages"]), "Install Redis Sentinel")
    service(unit)
    record_stale("sentinel", v, unit, SENTINEL_FILES)
    one_at_a_time(v, "sentinel", "redis-sentinel", [f"systemctl restart {unit}"], False)
    must("Wait until Sentinel answers with its password", f"sentinel-ping {timeout}", "sentinel")
    ensure(
        name="Make Sentinel monitor the group with the wanted settings",
        check=lambda: bool(helper("sentinel").get("changed")),
        apply=reported("sentinel"),
    )
