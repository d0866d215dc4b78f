"""The firewall role (roles/firewall): nftables with /etc/nftables.conf, SSH and the management
sources (main.yml), and each role's own rules file (`tasks_from: rules.yml`, `role_rules` here)."""

from __future__ import annotations

from typing import Any

from pyinfra.api import deploy

from pyinfra_deploy import helpers
from pyinfra_deploy.helpers import Vars
from pyinfra_deploy.roles.common import systemd_dropin
from pyinfra_deploy.variables import HostVars

NFT_LOAD = "nft -f /etc/nftables.conf"


def role_rules(v: Vars, name: str, rules: list[dict[str, Any]]) -> None:
    """The firewall role's `tasks_from: rules.yml`: one role's rules, loaded when changed."""
    if not v["firewall_enabled"]:
        return
    scoped = HostVars(v.world, v.name, {"firewall_rules_name": name, "firewall_rules": rules})
    written = helpers.write_template(
        scoped,
        "firewall/rules.nft.j2",
        f"{v['firewall_rules_dir']}/{name}.nft",
        validate="nft -c -f %s",
    )
    helpers.shell(
        f"Load the firewall rules of {name}", [NFT_LOAD], _if=helpers.any_changed(written)
    )


@deploy("firewall")
def firewall(v: Vars) -> None:
    """The firewall role's main entry: nftables, /etc/nftables.conf, SSH and management."""
    if not v["firewall_enabled"]:
        return
    helpers.apt_install(list(v["firewall_packages"]), "Install nftables")
    systemd_dropin(
        v,
        "nftables.service",
        v["firewall__unit_dropin"],
        name="clusterkit",
        container_only=False,
    )
    helpers.directory(v["firewall_rules_dir"], name="Create the firewall rules directory")
    conf = helpers.write_template(
        v, "firewall/nftables.conf.j2", "/etc/nftables.conf", mode="0755", validate="nft -c -f %s"
    )
    role_rules(v, "00-base", list(v["firewall__base_rules"]))
    started = helpers.enable_and_start("nftables.service")
    helpers.shell(
        "Load the new firewall rules",
        [NFT_LOAD],
        _if=lambda: helpers.has_changed(conf) and not helpers.has_changed(started),
    )
