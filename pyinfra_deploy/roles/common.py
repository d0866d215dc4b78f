"""The common role (roles/common): the host's release (preflight.yml), base packages
(packages.yml), kernel settings and limits (limits.yml), and the systemd drop-ins other roles
write through it (systemd_dropin.yml)."""

from __future__ import annotations

from pyinfra.api import deploy
from pyinfra.api.operation import OperationMeta

from pyinfra_deploy import helpers
from pyinfra_deploy.helpers import Vars, quote


def host_release(v: Vars) -> None:
    """The host's distribution and release, as Ansible's facts name them (the roles' per-release
    values are keyed by ansible_distribution_release); refused unless the common role supports
    it, before any host changes (roles/common/tasks/preflight.yml)."""
    out = helpers.fact_output('. /etc/os-release && echo "$ID $VERSION_CODENAME"').split()
    os_id, release = (out + ["", ""])[:2]
    distribution = {"debian": "Debian", "ubuntu": "Ubuntu"}.get(os_id, os_id.capitalize())
    v.set("ansible_distribution", distribution)
    v.set("ansible_distribution_release", release)
    supported = v["common__supported_releases"]
    if release not in supported.get(distribution, []):
        names = "; ".join(f"{d} {', '.join(r)}" for d, r in supported.items())
        raise RuntimeError(
            f"{v.name} runs {distribution} {release}, which clusterkit does not support. "
            f"Supported: {names} (docs/debian-releases.md)."
        )


def systemd_dropin(
    v: Vars,
    unit: str,
    settings: dict,
    name: str = "clusterkit-container",
    container_only: bool = True,
    restart_if_installed: bool = False,
) -> OperationMeta | None:
    """The common role's `tasks_from: systemd_dropin.yml`: a drop-in for `unit` (or for
    systemd itself, unit "system.conf"), systemd reloaded when it changed; nothing where not
    wanted (`container_only` on a host that is not a container)."""
    if container_only and not helpers.is_container(v.name):
        return None
    folder = (
        "/etc/systemd/system.conf.d" if unit == "system.conf" else f"/etc/systemd/system/{unit}.d"
    )
    helpers.directory(folder)
    op = helpers.write_template(
        v, "common/dropin.conf.j2", f"{folder}/{name}.conf", common_dropin_settings=settings
    )
    reload = "systemctl daemon-reexec" if unit == "system.conf" else "systemctl daemon-reload"
    helpers.shell(f"Reload systemd for {unit}", [reload], _if=helpers.any_changed(op))
    if restart_if_installed:
        helpers.shell(
            f"Restart {unit} for its drop-in",
            [
                f"if systemctl cat {quote(unit)} >/dev/null 2>&1; then "
                f"systemctl restart {quote(unit)}; fi"
            ],
            _if=helpers.any_changed(op),
        )
    return op


def _packages(v: Vars) -> None:
    helpers.apt_install(list(v["common_packages"]), "Install base packages")


def _limits(v: Vars) -> None:
    sysctl = helpers.write_template(v, "common/sysctl.conf.j2", "/etc/sysctl.d/60-clusterkit.conf")
    apply = v["common_sysctl_apply"]
    wanted = (
        (not helpers.is_container(v.name))
        if apply == "auto"
        else bool(v.render("{{ common_sysctl_apply | bool }}"))
    )
    if wanted:
        helpers.shell("Apply sysctl settings", ["sysctl --system"], _if=helpers.any_changed(sysctl))
    helpers.write_template(v, "common/limits.conf.j2", "/etc/security/limits.d/60-clusterkit.conf")
    systemd_dropin(
        v,
        "system.conf",
        {"Manager": {"DefaultLimitNOFILE": v["common_nofile_limit"]}},
        name="60-clusterkit",
        container_only=False,
    )


@deploy("common")
def common(v: Vars) -> None:
    """The common role's main entry (the release is checked first, by host_release)."""
    _packages(v)
    _limits(v)
