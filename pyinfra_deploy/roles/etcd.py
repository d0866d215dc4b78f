"""The etcd role (roles/etcd): etcd from the distribution's packages on the hosts of group etcd,
its config checked before it replaces the one in use (a member with data keeps the bootstrap
values it was started with), members restarted one at a time, each healthy with its cluster
before the next, then client authentication set up from the group's first host."""

from __future__ import annotations

import json
from pathlib import Path

from pyinfra.api import deploy
from pyinfra.api.operation import OperationMeta

from pyinfra_deploy import helpers
from pyinfra_deploy.helpers import Vars, quote
from pyinfra_deploy.roles.common import systemd_dropin
from pyinfra_deploy.roles.firewall import role_rules
from pyinfra_deploy.variables import ROOT


def _local_health(v: Vars) -> str:
    """Shell that succeeds when the local member reports itself healthy."""
    return (
        f"python3 -c 'import json, sys, urllib.request; "
        "sys.exit(json.load(urllib.request.urlopen(sys.argv[1], timeout=5))"
        '.get("health") != "true")\' '
        f"http://127.0.0.1:{int(v['etcd_client_port'])}/health >/dev/null 2>&1"
    )


def _cluster_health(v: Vars) -> list[str]:
    """Commands that wait until the whole cluster is healthy (etcdctl as root)."""
    root_env = {
        "ETCDCTL_API": "3",
        "ETCDCTL_ENDPOINTS": f"http://127.0.0.1:{int(v['etcd_client_port'])}",
        "ETCDCTL_USER": "root",
        "ETCDCTL_PASSWORD": v["etcd_root_password"],
    }
    retries = int(v["etcd_health_retries"]) * int(v["etcd_health_delay"])
    cluster = "etcdctl endpoint health --cluster >/dev/null 2>&1"
    return [
        helpers.retry_until(_local_health(v), retries, "etcd"),
        *helpers.with_secrets(helpers.retry_until(cluster, retries, "etcd cluster"), root_env),
    ]


def _install(v: Vars) -> OperationMeta | None:
    """install.yml: the unit's drop-in (returned: a change restarts etcd), the packages, the
    data and config directories and the config check."""
    unit_dropin = systemd_dropin(
        v, "etcd.service", v["etcd__unit_dropin"], name="clusterkit", container_only=False
    )
    helpers.apt_install(list(v["etcd_packages"]) + ["python3-yaml"], "Install etcd")
    helpers.directory(
        v["etcd_data_dir"], "etcd", "etcd", "0700", name="Create the etcd data directory"
    )
    helpers.directory(
        str(Path(v["etcd_config_file"]).parent), name="Create the etcd config directory"
    )
    helpers.installed_file(
        name="Install the etcd config check",
        dest=v["etcd__validate_command"],
        src=ROOT / "roles/etcd/files/clusterkit-etcd-validate",
        mode="0755",
    )
    return unit_dropin


def _configure(v: Vars) -> OperationMeta:
    """configure.yml: a member with data keeps the bootstrap values it was started with."""
    config_file = v["etcd_config_file"]
    current = helpers.fact_output(
        f"if [ -d {quote(v['etcd_data_dir'])}/member ] && [ -f {quote(config_file)} ]; then "
        "python3 -c 'import json, sys, yaml; "
        "print(json.dumps(yaml.safe_load(open(sys.argv[1]))))' "
        f"{quote(config_file)}; else echo '{{}}'; fi",
    )
    started_with = json.loads(current or "{}") or {}
    initial_cluster = started_with.get("initial-cluster", v["etcd__group_initial_cluster"])
    initial_state = started_with.get("initial-cluster-state", "existing" if started_with else "new")
    return helpers.write_template(
        v,
        "etcd/etcd.conf.yml.j2",
        config_file,
        mode="0640",
        group="etcd",
        validate=f"{v['etcd__validate_command']} %s",
        etcd__initial_cluster=initial_cluster,
        etcd__initial_cluster_state=initial_state,
    )


def _restart(v: Vars, conf: OperationMeta, unit_dropin: OperationMeta | None) -> None:
    """restart.yml: one member at a time, healthy with its cluster before the next."""
    helpers.ensure(
        name="Restart etcd for its new config",
        check=lambda: (
            helpers.any_changed(conf, unit_dropin)()
            and helpers.run_now("systemctl is-active --quiet etcd")[0]
        ),
        apply=lambda: iter(["systemctl restart etcd", *_cluster_health(v)]),
        _serial=True,
    )


def _service(v: Vars) -> None:
    helpers.enable_and_start("etcd.service", no_block=True)
    helpers.ensure(
        name="Wait until the etcd cluster is healthy",
        check=lambda: not helpers.run_now(_local_health(v))[0],
        apply=lambda: iter(_cluster_health(v)),
    )


def _auth(v: Vars) -> None:
    """auth.yml, from the group's first host."""
    if v.name != v["groups"][v["etcd_group"]][0] or not v.render("{{ etcd_auth_enabled | bool }}"):
        return
    helper = "/usr/local/sbin/clusterkit-etcd-auth"
    helpers.installed_file(
        name="Install the etcd auth helper",
        dest=helper,
        src=ROOT / "pyinfra_deploy/files/etcd-auth.py",
        mode="0755",
    )
    auth_env = {
        "ETCD_ROOT_PASSWORD": v["etcd_root_password"],
        "ETCD_APP_PASSWORD": v["etcd_app_password"],
        "ETCD_APP_USER": v["etcd_app_user"],
        "ETCD_APP_PREFIX": v["etcd_app_key_prefix"],
        "ETCD_ENDPOINT": f"http://127.0.0.1:{int(v['etcd_client_port'])}",
    }
    helpers.ensure(
        name="Set up etcd client authentication",
        check=lambda: not helpers.run_now(f"{helper} check >/dev/null", auth_env)[0],
        apply=lambda: helpers.with_secrets(f"{helper} apply", auth_env),
    )


@deploy("etcd")
def etcd(v: Vars) -> None:
    """The etcd role's main entry, on the hosts of group etcd."""
    unit_dropin = _install(v)
    conf = _configure(v)
    _restart(v, conf, unit_dropin)
    role_rules(v, "etcd", list(v["etcd_firewall_rules"]))  # firewall.yml
    _service(v)
    _auth(v)
