"""The keepalived role for the pyinfra engine: one virtual address for the hosts of group lb,
from the same templates and variables as roles/keepalived (VRRP over unicast, PASS auth from
the same generated secret, the tracked nginx -> HAProxy check, every host BACKUP with
nopreempt). deploy.py calls it after nginx and HAProxy, when the group has two hosts or more.
"""

from __future__ import annotations

from pyinfra.api import deploy
from pyinfra.operations import files

from pyinfra_deploy.ops import ensure, installed_file, run
from pyinfra_deploy.roles import (
    Vars,
    apt,
    changed,
    done_and_changed,
    firewall_rules,
    q,
    service,
    template,
    wait_for_page,
)
from pyinfra_deploy.variables import ROOT, HostVars


def interface(v: Vars) -> str:
    """keepalived_interface, else the interface that carries the host's address (the facts
    Ansible reads for roles/keepalived/vars/main.yml)."""
    if v["keepalived_interface"]:
        return str(v["keepalived_interface"])
    address = v["keepalived_unicast_src_ip"]
    ok, out = run(f"ip -4 -o addr show to {q(address)} | awk '{{print $2}}'")
    if ok and out and out[0].strip():
        return out[0].strip()
    ok, out = run("ip -4 route show default | awk '{print $5; exit}'")
    return out[0].strip() if ok and out and out[0].strip() else "eth0"


@deploy("keepalived")
def keepalived(v: Vars) -> None:
    apt(list(v["keepalived_packages"]), "Install keepalived")
    user = v["keepalived_script_user"]
    ensure(
        name=f"Create the user {user}",
        check=lambda: not run(f"id -u {q(user)} >/dev/null 2>&1")[0],
        apply=lambda: iter(
            [f"useradd --system --shell /usr/sbin/nologin --home-dir /nonexistent -M {q(user)}"]
        ),
    )
    validator = "/usr/local/sbin/clusterkit-keepalived-validate"
    installed_file(
        name=f"Install {validator}",
        dest=validator,
        src=ROOT / "roles/keepalived/files/clusterkit-keepalived-validate",
        mode="0755",
    )
    scoped = HostVars(v.world, v.name, {"keepalived__interface": interface(v)})
    options = template(scoped, "keepalived/keepalived.default.j2", "/etc/default/keepalived")
    script = template(
        scoped,
        "keepalived/check-frontend.sh.j2",
        v["keepalived_check_script"],
        mode="0755",
        validate="sh -n %s",
    )
    conf = template(
        scoped,
        "keepalived/keepalived.conf.j2",
        "/etc/keepalived/keepalived.conf",
        mode="0600",
        validate=f"{validator} %s",
    )
    firewall_rules(v, "keepalived", list(v["keepalived_firewall_rules"]))
    start = service("keepalived.service")
    ensure(
        name="Restart keepalived for its new options",
        check=lambda: changed(options)() and not done_and_changed(start),
        apply=lambda: iter(["systemctl restart keepalived.service"]),
    )
    ensure(
        name="Reload keepalived for its new config",
        check=lambda: (
            changed(conf, script)()
            and not done_and_changed(start)
            and not done_and_changed(options)
        ),
        apply=lambda: iter(["systemctl reload keepalived.service"]),
    )
    if v["keepalived_wait_url"]:
        wait_for_page(
            "Wait until the virtual address serves the front end",
            v["keepalived_wait_url"],
            int(v["keepalived_start_timeout"]),
            "the virtual address",
        )
    files.directory(
        name="Keep /etc/keepalived root's",
        path="/etc/keepalived",
        user="root",
        group="root",
        mode="0755",
    )
