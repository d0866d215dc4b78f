"""The keepalived role (roles/keepalived): one virtual address for the hosts of group lb (VRRP
over unicast, PASS auth from the same generated secret, the tracked nginx -> HAProxy check,
every host BACKUP with nopreempt). deploy.py calls it after nginx and HAProxy, when the group
has two hosts or more.
"""

from __future__ import annotations

from pyinfra.api import deploy
from pyinfra.api.operation import OperationMeta

from pyinfra_deploy import helpers
from pyinfra_deploy.helpers import Vars, quote
from pyinfra_deploy.roles.firewall import role_rules
from pyinfra_deploy.variables import ROOT, HostVars

VALIDATOR = "/usr/local/sbin/clusterkit-keepalived-validate"


def _interface(v: Vars) -> str:
    """keepalived_interface, else the interface that carries the host's address (the facts
    Ansible reads for roles/keepalived/vars/main.yml)."""
    if v["keepalived_interface"]:
        return str(v["keepalived_interface"])
    address = v["keepalived_unicast_src_ip"]
    ok, out = helpers.run_now(f"ip -4 -o addr show to {quote(address)} | awk '{{print $2}}'")
    if ok and out and out[0].strip():
        return out[0].strip()
    ok, out = helpers.run_now("ip -4 route show default | awk '{print $5; exit}'")
    return out[0].strip() if ok and out and out[0].strip() else "eth0"


def _install(v: Vars) -> None:
    helpers.apt_install(list(v["keepalived_packages"]), "Install keepalived")
    user = v["keepalived_script_user"]
    helpers.ensure(
        name=f"Create the user {user}",
        check=lambda: not helpers.run_now(f"id -u {quote(user)} >/dev/null 2>&1")[0],
        apply=lambda: iter(
            [f"useradd --system --shell /usr/sbin/nologin --home-dir /nonexistent -M {quote(user)}"]
        ),
    )
    helpers.installed_file(
        name=f"Install {VALIDATOR}",
        dest=VALIDATOR,
        src=ROOT / "roles/keepalived/files/clusterkit-keepalived-validate",
        mode="0755",
    )


def _configure(v: Vars) -> tuple[OperationMeta, OperationMeta, OperationMeta]:
    """configure.yml: the command-line options, the check script and keepalived.conf."""
    scoped = HostVars(v.world, v.name, {"keepalived__interface": _interface(v)})
    options = helpers.write_template(
        scoped, "keepalived/keepalived.default.j2", "/etc/default/keepalived"
    )
    script = helpers.write_template(
        scoped,
        "keepalived/check-frontend.sh.j2",
        v["keepalived_check_script"],
        mode="0755",
        validate="sh -n %s",
    )
    conf = helpers.write_template(
        scoped,
        "keepalived/keepalived.conf.j2",
        "/etc/keepalived/keepalived.conf",
        mode="0600",
        validate=f"{VALIDATOR} %s",
    )
    return options, script, conf


def _service(v: Vars, options: OperationMeta, script: OperationMeta, conf: OperationMeta) -> None:
    start = helpers.enable_and_start("keepalived.service")
    helpers.ensure(
        name="Restart keepalived for its new options",
        check=lambda: helpers.any_changed(options)() and not helpers.has_changed(start),
        apply=lambda: iter(["systemctl restart keepalived.service"]),
    )
    helpers.ensure(
        name="Reload keepalived for its new config",
        check=lambda: (
            helpers.any_changed(conf, script)()
            and not helpers.has_changed(start)
            and not helpers.has_changed(options)
        ),
        apply=lambda: iter(["systemctl reload keepalived.service"]),
    )
    if v["keepalived_wait_url"]:
        helpers.wait_for_page(
            "Wait until the virtual address serves the front end",
            v["keepalived_wait_url"],
            int(v["keepalived_start_timeout"]),
            "the virtual address",
        )
    helpers.directory("/etc/keepalived", name="Keep /etc/keepalived root's")


@deploy("keepalived")
def keepalived(v: Vars) -> None:
    """The keepalived role's main entry, on the hosts of group lb."""
    _install(v)
    options, script, conf = _configure(v)
    role_rules(v, "keepalived", list(v["keepalived_firewall_rules"]))  # firewall.yml
    _service(v, options, script, conf)
