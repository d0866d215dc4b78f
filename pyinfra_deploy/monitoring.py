"""The monitoring roles for the pyinfra engine, from the same templates, files and variables as
roles/exporters and roles/monitoring: the exporters on every host (while the inventory has
monitoring hosts), then Prometheus and Alertmanager on the hosts of group monitoring. Every
config passes the same check (promtool, amtool) before it replaces the one in use; a service
is restarted for a new command line and reloaded for a new config, only when one changed.
deploy.py calls `exporters` and `monitoring` last, as site.yml imports playbooks/monitoring.yml.
"""

from __future__ import annotations

from pyinfra.api import deploy
from pyinfra.api.operation import OperationMeta
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
    shell,
    template,
    wait_for,
)
from pyinfra_deploy.variables import ROOT, HostVars

EXPORTERS = ROOT / "roles" / "exporters"
MONITORING = ROOT / "roles" / "monitoring"
MONGODB_PROBE = "clusterkit-mongodb-metrics"


def default_file(v: Vars, unit: str, args: list[str], env: dict[str, str]) -> OperationMeta:
    """/etc/default/<unit> from templates/monitoring/default.j2 (root-only with secrets)."""
    scoped = HostVars(
        v.world,
        v.name,
        {
            "monitoring_default_unit": f"{unit}.service",
            "monitoring_default_args": args,
            "monitoring_default_env": env,
        },
    )
    return template(
        scoped, "monitoring/default.j2", f"/etc/default/{unit}", mode="0600" if env else "0644"
    )


def wait_http(name: str, url: str, seconds: int) -> OperationMeta:
    """Wait until `url` answers 200 on the host; no change when it already does."""
    ok = f"[ \"$(curl -s -o /dev/null --max-time 2 -w '%{{http_code}}' {q(url)})\" = 200 ]"
    return ensure(
        name=name,
        check=lambda: not run(ok)[0],
        apply=lambda: iter([wait_for(f"{{ {ok}; }}", seconds, url)]),
    )


@deploy("exporters")
def exporters(v: Vars) -> None:
    apt(list(v["exporters__packages"]), "Install the exporters", recommends=False)
    mongodb = bool(v["exporters__mongodb"])
    if mongodb:
        installed_file(
            name=f"Install {MONGODB_PROBE}",
            dest=f"/usr/local/sbin/{MONGODB_PROBE}",
            src=EXPORTERS / "files" / MONGODB_PROBE,
            mode="0755",
        )
    defaults = {
        unit["unit"]: default_file(v, unit["unit"], list(unit["args"]), dict(unit["env"]))
        for unit in v["exporters__units"]
    }
    unit_files = []
    if mongodb:
        for kind in ("service", "timer"):
            unit_files.append(
                template(
                    v,
                    f"exporters/mongodb-metrics.{kind}.j2",
                    f"/etc/systemd/system/{MONGODB_PROBE}.{kind}",
                )
            )
    firewall_rules(v, "exporters", list(v["exporters__firewall_rules"]))
    reload = ["systemctl daemon-reload"]
    shell("Reload systemd for the probe's units", reload, _if=changed(*unit_files))
    for unit, written in defaults.items():
        if unit == MONGODB_PROBE:
            service(f"{MONGODB_PROBE}.timer")
            continue
        # A package's default config can make its exporter exit at once until systemd's start
        # limit stops it (the nginx exporter): a new command line starts from a clean slate.
        shell(
            f"Restart {unit} for its new command line",
            [
                f"systemctl reset-failed {q(unit + '.service')} || true",
                f"systemctl enable {q(unit + '.service')}",
                f"systemctl restart {q(unit + '.service')}",
            ],
            _if=changed(written),
        )
        service(f"{unit}.service")
    address, port = v["exporters_bind_address"], int(v["exporters_node_port"])
    wait_http("Wait until the node exporter answers", f"http://{address}:{port}/metrics", 30)


@deploy("monitoring")
def monitoring(v: Vars) -> None:
    address = v["monitoring_bind_address"]
    if not address or address in ("0.0.0.0", "::"):
        raise RuntimeError(
            f"{v.name}: Prometheus and Alertmanager listen on the private address only: set "
            "clusterkit_address (or monitoring_bind_address to an address of this host)"
        )
    apt(list(v["monitoring_packages"]), "Install Prometheus and Alertmanager", recommends=False)
    rules_dir = v["monitoring_rules_dir"]
    for path, group, mode in (
        (rules_dir, "root", "0755"),
        ("/etc/prometheus/secrets", "prometheus", "0750"),
        ("/etc/prometheus/consoles", "root", "0755"),
        ("/etc/prometheus/console_libraries", "root", "0755"),
    ):
        files.directory(name=f"Create {path}", path=path, user="root", group=group, mode=mode)
    secret = installed_file(
        name="Write the HAProxy stats password for Prometheus",
        dest="/etc/prometheus/secrets/haproxy_stats_password",
        content=str(v["monitoring_haproxy_password"]),
        group="prometheus",
        mode="0640",
    )
    sources = [MONITORING / "files/rules/clusterkit.rules.yml", *v["monitoring_extra_rule_files"]]
    rules = [
        installed_file(
            name=f"Write the alert rules {name}",
            dest=f"{rules_dir}/{name}",
            src=src,
            validate="promtool check rules %s",
        )
        for src in sources
        for name in [str(src).rsplit("/", 1)[-1]]
    ]
    prometheus_conf = template(
        v,
        "monitoring/prometheus.yml.j2",
        "/etc/prometheus/prometheus.yml",
        validate="promtool check config %s",
    )
    alertmanager_conf = template(
        v,
        "monitoring/alertmanager.yml.j2",
        "/etc/prometheus/alertmanager.yml",
        validate="amtool check-config %s",
    )
    if v["monitoring_consoles_enabled"]:
        libraries = v["monitoring_console_libraries_src"]
        for lib in ("menu.lib", "prom.lib"):
            dest = f"/etc/prometheus/console_libraries/{lib}"
            ensure(
                name=f"Install the console library {lib}",
                check=lambda src=f"{libraries}/{lib}", dest=dest: (
                    not run(
                        f"cmp -s {q(src)} {q(dest)} && "
                        f"[ \"$(stat -c '%U %G %a' {q(dest)})\" = 'root root 644' ]"
                    )[0]
                ),
                apply=lambda src=f"{libraries}/{lib}", dest=dest: iter(
                    [f"install -o root -g root -m 0644 {q(src)} {q(dest)}"]
                ),
            )
        installed_file(
            name="Write the clusterkit console",
            dest="/etc/prometheus/consoles/clusterkit.html",
            src=MONITORING / "files/consoles/clusterkit.html",
        )
    command_lines = {
        "prometheus": default_file(v, "prometheus", list(v["monitoring__prometheus_args"]), {}),
        "prometheus-alertmanager": default_file(
            v, "prometheus-alertmanager", list(v["monitoring__alertmanager_args"]), {}
        ),
    }
    firewall_rules(v, "monitoring", list(v["monitoring_firewall_rules"]))
    reloads = {
        "prometheus": (secret, *rules, prometheus_conf),
        "prometheus-alertmanager": (alertmanager_conf,),
    }
    for unit, written in command_lines.items():
        started = service(f"{unit}.service")
        restart = shell(
            f"Restart {unit} for its new command line",
            [f"systemctl restart {unit}.service"],
            _if=changed(written),
        )
        ensure(
            name=f"Reload {unit} for its new config",
            check=lambda ops=reloads[unit], restart=restart, started=started: (
                changed(*ops)() and not done_and_changed(restart) and not done_and_changed(started)
            ),
            apply=lambda unit=unit: iter([f"systemctl reload {unit}.service"]),
        )
    for port in (v["monitoring_prometheus_port"], v["monitoring_alertmanager_port"]):
        wait_http(
            f"Wait until port {port} is ready",
            f"http://{address}:{int(port)}/-/ready",
            int(v["monitoring_start_timeout"]),
        )
