"""The redis role (roles/redis): one primary, replicas and a Sentinel on each host of group
redis (a single Redis, no Sentinel, when the group has one host), from the same templates,
variables and helper scripts. Redis starts through clusterkit-redis-ha (as a replica of the
current primary); members whose config is newer than their running server are restarted one
at a time, the primary first, each serving again before the next one stops; Sentinel's own
file is written once and its monitoring settings are enforced at run time.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Generator
from typing import Any

from pyinfra import host
from pyinfra.api import FunctionCommand, deploy

from pyinfra_deploy import helpers
from pyinfra_deploy.helpers import Command, Vars, quote
from pyinfra_deploy.roles.common import systemd_dropin
from pyinfra_deploy.roles.firewall import role_rules
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


def _unchanged() -> Generator[Command, None, None]:
    """The body of an operation whose check only looks (and never asks for a change)."""
    yield from ()


def _ha(command: str) -> dict[str, Any]:
    """clusterkit-redis-ha COMMAND on the current host; its JSON answer."""
    ok, out = helpers.run_now(f"{HA} {command}")
    try:
        answer = json.loads("\n".join(out) or "{}")
    except ValueError:
        answer = {}
    return {**answer, "ok": ok}


def _primary(v: Vars) -> str:
    """The primary a majority of the running Sentinels report, else redis_initial_primary.
    Asked once per run (Ansible: run_once)."""
    if found["primary"] is None:
        answer = _ha("primary")
        initial = f"{v['redis_initial_primary_address']}:{v['redis_initial_primary_port']}"
        found["primary"] = answer.get("primary") or initial
    return str(found["primary"])


def _reported(command: str) -> Callable[[], Generator[Command, None, None]]:
    """An operation body for a helper command that changed the host itself (it said so)."""
    return lambda: iter([FunctionCommand(helpers.mark_changed, (command,), {})])


def _must(name: str, command: str, what: str) -> None:
    """A helper command that waits for something; the operation fails when it times out."""
    helpers.ensure(
        name=name,
        check=lambda: not helpers.run_now(f"{HA} {command}")[0],
        apply=lambda: iter([f"echo {quote(what + ' not ready in time')} >&2; exit 1"]),
    )


def _address(v: Vars, name: str) -> str:
    other = v.world[name]
    return f"{other['redis_bind_address']}:{other['redis_port']}"


def _restart(v: Vars, kind: str, what: str, restart: list[str], primary_first: bool) -> None:
    """restart.yml: restart the group's stale members of `kind`, one operation per member so
    that no two restart at once, the primary first when asked to."""
    members = list(v["redis_group_hosts"])

    def order() -> list[str]:
        stale = [h for h in members if found["stale"].get((kind, h))]
        if not primary_first:
            return stale
        me = {h: _address(v, h) == _primary(v) for h in stale}
        return [h for h in stale if me[h]] + [h for h in stale if not me[h]]

    for i in host.loop(range(len(members))):
        helpers.ensure(
            name=f"Restart {what} ({i + 1} of {len(members)}, when its config changed)",
            check=lambda i=i: i < len(order()) and order()[i] == v.name,
            apply=lambda: iter(restart),
        )


def _record_stale(kind: str, v: Vars, unit: str, paths: list[str]) -> None:
    """clusterkit-redis-ha stale: decided from the files, so a run that failed after writing
    them still restarts next time. Changes nothing itself."""

    def look() -> bool:
        answer = _ha(f"stale {unit} {' '.join(paths)}")
        found["stale"][(kind, v.name)] = bool(answer.get("stale", True))
        return False

    helpers.ensure(
        name=f"Look for a config newer than the running {unit}", check=look, apply=_unchanged
    )


def _install(v: Vars) -> None:
    # The container drop-in before the package (its postinst starts the unit).
    systemd_dropin(
        v, "redis-server.service", v["redis_container_dropin"], restart_if_installed=True
    )
    helpers.apt_install(list(v["redis_packages"]), "Install the Redis packages")
    for name in ("clusterkit-redis-validate", "clusterkit-redis-ha"):
        helpers.installed_file(
            name=f"Install /usr/local/sbin/{name}",
            dest=f"/usr/local/sbin/{name}",
            src=ROOT / "roles/redis/files" / name,
            mode="0755",
        )


def _configure(v: Vars) -> None:
    helpers.write_template(
        v, "redis/ha.conf.j2", "/etc/redis/clusterkit-ha.conf", mode="0640", group="redis"
    )
    helpers.ensure(
        name="Ask the Sentinels for the current primary",
        check=lambda: not _primary(v),
        apply=_unchanged,
    )
    check = f"{VALIDATE} %s {int(v['redis_validate_grace'])}"
    for name, dest in (("auth", "redis-auth"), ("redis", "redis")):
        helpers.write_template(
            v,
            f"redis/{name}.conf.j2",
            f"/etc/redis/{dest}.conf",
            mode="0640",
            group="redis",
            validate=check,
        )
    # ExecStart through clusterkit-redis-ha, /etc/redis read-only for Redis.
    systemd_dropin(
        v, "redis-server.service", v["redis_ha_dropin"], name="clusterkit-ha", container_only=False
    )
    _record_stale("redis", v, "redis-server.service", SERVER_FILES)


def _service(v: Vars, timeout: int, sentinel: bool) -> None:
    helpers.enable_and_start("redis-server.service")
    _restart(
        v,
        "redis",
        "redis-server",
        ["systemctl restart redis-server.service", f"{HA} wait {timeout}"],
        primary_first=True,
    )
    if sentinel:
        helpers.ensure(
            name="Make the other members replicas of the initial primary (before Sentinel)",
            check=lambda: bool(_ha("replication").get("changed")),
            apply=_reported("replication"),
        )
    _must("Wait until Redis serves", f"wait {timeout}", "redis")


def _sentinel(v: Vars, timeout: int) -> None:
    unit = "redis-sentinel.service"
    systemd_dropin(v, unit, v["redis_container_dropin"])
    systemd_dropin(v, unit, v["redis_sentinel_dropin"], name="clusterkit-ha", container_only=False)

    def first_config() -> str:
        host_, _, port = _primary(v).rpartition(":")
        return render(
            "redis/sentinel.conf.j2", v, redis__primary_host=host_, redis__primary_port=port
        )

    helpers.installed_file(
        name="Write the first Sentinel configuration",
        dest=v["redis_sentinel_conf"],
        content=first_config,
        mode="0640",
        user="redis",
        group="redis",
        validate=f"{VALIDATE} %s {int(v['redis_validate_grace'])} sentinel",
        force=False,
    )
    helpers.apt_install(list(v["redis_sentinel_packages"]), "Install Redis Sentinel")
    helpers.enable_and_start(unit)
    _record_stale("sentinel", v, unit, SENTINEL_FILES)
    _restart(v, "sentinel", "redis-sentinel", [f"systemctl restart {unit}"], False)
    _must("Wait until Sentinel answers with its password", f"sentinel-ping {timeout}", "sentinel")
    helpers.ensure(
        name="Make Sentinel monitor the group with the wanted settings",
        check=lambda: bool(_ha("sentinel").get("changed")),
        apply=_reported("sentinel"),
    )


@deploy("redis")
def redis(v: Vars) -> None:
    """The redis role's main entry, on the hosts of group redis."""
    timeout = int(v["redis_start_timeout"])
    sentinel = bool(v.render("{{ redis_sentinel_enabled | bool }}"))
    _install(v)
    _configure(v)
    role_rules(v, "redis", list(v["redis_firewall_rules"]))  # firewall.yml
    _service(v, timeout, sentinel)
    if sentinel:
        _sentinel(v, timeout)
