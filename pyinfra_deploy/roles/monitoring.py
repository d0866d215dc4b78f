"""The monitoring role (roles/monitoring): Prometheus and Alertmanager on the hosts of group
monitoring, listening on the private address only. Every config passes the same check
(promtool, amtool) before it replaces the one in use; a service is restarted for a new command
line and reloaded for a new config, only when one changed."""

from __future__ import annotations

from pyinfra.api import deploy
from pyinfra.api.operation import OperationMeta

from pyinfra_deploy import helpers
from pyinfra_deploy.helpers import Vars, quote
from pyinfra_deploy.roles.firewall import role_rules
from pyinfra_deploy.variables import ROOT

FILES = ROOT / "roles" / "monitoring" / "files"


def _preflight(v: Vars) -> None:
    address = v["monitoring_bind_address"]
    if not address or address in ("0.0.0.0", "::"):
        raise RuntimeError(
            f"{v.name}: Prometheus and Alertmanager listen on the private address only: set "
            "clusterkit_address (or monitoring_bind_address to an address of this host)"
        )


def _console_libraries(v: Vars) -> None:
    """The console libraries Debian ships as examples, installed where Prometheus reads them."""
    libraries = v["monitoring_console_libraries_src"]
    for lib in ("menu.lib", "prom.lib"):
        dest = f"/etc/prometheus/console_libraries/{lib}"
        helpers.ensure(
            name=f"Install the console library {lib}",
            check=lambda src=f"{libraries}/{lib}", dest=dest: (
                not helpers.run_now(
                    f"cmp -s {quote(src)} {quote(dest)} && "
                    f"[ \"$(stat -c '%U %G %a' {quote(dest)})\" = 'root root 644' ]"
                )[0]
            ),
            apply=lambda src=f"{libraries}/{lib}", dest=dest: iter(
                [f"install -o root -g root -m 0644 {quote(src)} {quote(dest)}"]
            ),
        )


def _configure(v: Vars) -> tuple[dict[str, OperationMeta], dict[str, tuple[OperationMeta, ...]]]:
    """configure.yml; the command lines of both services and what each reloads for."""
    rules_dir = v["monitoring_rules_dir"]
    for path, group, mode in (
        (rules_dir, "root", "0755"),
        ("/etc/prometheus/secrets", "prometheus", "0750"),
        ("/etc/prometheus/consoles", "root", "0755"),
        ("/etc/prometheus/console_libraries", "root", "0755"),
    ):
        helpers.directory(path, group=group, mode=mode)
    secret = helpers.installed_file(
        name="Write the HAProxy stats password for Prometheus",
        dest="/etc/prometheus/secrets/haproxy_stats_password",
        content=str(v["monitoring_haproxy_password"]),
        group="prometheus",
        mode="0640",
    )
    sources = [FILES / "rules/clusterkit.rules.yml", *v["monitoring_extra_rule_files"]]
    rules = [
        helpers.installed_file(
            name=f"Write the alert rules {name}",
            dest=f"{rules_dir}/{name}",
            src=src,
            validate="promtool check rules %s",
        )
        for src in sources
        for name in [str(src).rsplit("/", 1)[-1]]
    ]
    prometheus_conf = helpers.write_template(
        v,
        "monitoring/prometheus.yml.j2",
        "/etc/prometheus/prometheus.yml",
        validate="promtool check config %s",
    )
    alertmanager_conf = helpers.write_template(
        v,
        "monitoring/alertmanager.yml.j2",
        "/etc/prometheus/alertmanager.yml",
        validate="amtool check-config %s",
    )
    if v["monitoring_consoles_enabled"]:
        _console_libraries(v)
        helpers.installed_file(
            name="Write the clusterkit console",
            dest="/etc/prometheus/consoles/clusterkit.html",
            src=FILES / "consoles/clusterkit.html",
        )
    command_lines = {
        "prometheus": helpers.write_default_file(
            v, "prometheus", list(v["monitoring__prometheus_args"]), {}
        ),
        "prometheus-alertmanager": helpers.write_default_file(
            v, "prometheus-alertmanager", list(v["monitoring__alertmanager_args"]), {}
        ),
    }
    reloads = {
        "prometheus": (secret, *rules, prometheus_conf),
        "prometheus-alertmanager": (alertmanager_conf,),
    }
    return command_lines, reloads


def _service(
    v: Vars,
    command_lines: dict[str, OperationMeta],
    reloads: dict[str, tuple[OperationMeta, ...]],
) -> None:
    for unit, written in command_lines.items():
        started = helpers.enable_and_start(f"{unit}.service")
        restart = helpers.shell(
            f"Restart {unit} for its new command line",
            [f"systemctl restart {unit}.service"],
            _if=helpers.any_changed(written),
        )
        helpers.ensure(
            name=f"Reload {unit} for its new config",
            check=lambda ops=reloads[unit], restart=restart, started=started: (
                helpers.any_changed(*ops)()
                and not helpers.has_changed(restart)
                and not helpers.has_changed(started)
            ),
            apply=lambda unit=unit: iter([f"systemctl reload {unit}.service"]),
        )
    address = v["monitoring_bind_address"]
    for port in (v["monitoring_prometheus_port"], v["monitoring_alertmanager_port"]):
        helpers.wait_for_http(
            f"Wait until port {port} is ready",
            f"http://{address}:{int(port)}/-/ready",
            int(v["monitoring_start_timeout"]),
        )


@deploy("monitoring")
def monitoring(v: Vars) -> None:
    """The monitoring role's main entry, on the hosts of group monitoring."""
    _preflight(v)
    helpers.apt_install(
        list(v["monitoring_packages"]), "Install Prometheus and Alertmanager", recommends=False
    )  # install.yml
    command_lines, reloads = _configure(v)
    role_rules(v, "monitoring", list(v["monitoring_firewall_rules"]))  # firewall.yml
    _service(v, command_lines, reloads)
