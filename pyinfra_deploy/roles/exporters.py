"""The exporters role (roles/exporters): the Prometheus exporters of each host's groups (and the
MongoDB replica-set probe on the MongoDB hosts), on every host while the inventory has
monitoring hosts; an exporter is restarted for a new command line only."""

from __future__ import annotations

from pyinfra.api import deploy
from pyinfra.api.operation import OperationMeta

from pyinfra_deploy import helpers
from pyinfra_deploy.helpers import Vars, quote
from pyinfra_deploy.roles.firewall import role_rules
from pyinfra_deploy.variables import ROOT

FILES = ROOT / "roles" / "exporters" / "files"
MONGODB_PROBE = "clusterkit-mongodb-metrics"


def _install(v: Vars) -> None:
    helpers.apt_install(list(v["exporters__packages"]), "Install the exporters", recommends=False)
    if v["exporters__mongodb"]:
        helpers.installed_file(
            name=f"Install {MONGODB_PROBE}",
            dest=f"/usr/local/sbin/{MONGODB_PROBE}",
            src=FILES / MONGODB_PROBE,
            mode="0755",
        )


def _configure(v: Vars) -> tuple[dict[str, OperationMeta], list[OperationMeta]]:
    """configure.yml: the exporters' command lines and the probe's units."""
    defaults = {
        unit["unit"]: helpers.write_default_file(
            v, unit["unit"], list(unit["args"]), dict(unit["env"])
        )
        for unit in v["exporters__units"]
    }
    unit_files = []
    if v["exporters__mongodb"]:
        for kind in ("service", "timer"):
            unit_files.append(
                helpers.write_template(
                    v,
                    f"exporters/mongodb-metrics.{kind}.j2",
                    f"/etc/systemd/system/{MONGODB_PROBE}.{kind}",
                )
            )
    return defaults, unit_files


def _service(v: Vars, defaults: dict[str, OperationMeta], unit_files: list[OperationMeta]) -> None:
    reload = ["systemctl daemon-reload"]
    helpers.shell(
        "Reload systemd for the probe's units", reload, _if=helpers.any_changed(*unit_files)
    )
    for unit, written in defaults.items():
        if unit == MONGODB_PROBE:
            helpers.enable_and_start(f"{MONGODB_PROBE}.timer")
            continue
        # A package's default config can make its exporter exit at once until systemd's start
        # limit stops it (the nginx exporter): a new command line starts from a clean slate.
        helpers.shell(
            f"Restart {unit} for its new command line",
            [
                f"systemctl reset-failed {quote(unit + '.service')} || true",
                f"systemctl enable {quote(unit + '.service')}",
                f"systemctl restart {quote(unit + '.service')}",
            ],
            _if=helpers.any_changed(written),
        )
        helpers.enable_and_start(f"{unit}.service")
    address, port = v["exporters_bind_address"], int(v["exporters_node_port"])
    helpers.wait_for_http(
        "Wait until the node exporter answers", f"http://{address}:{port}/metrics", 30
    )


@deploy("exporters")
def exporters(v: Vars) -> None:
    """The exporters role's main entry, on every host while group monitoring has hosts."""
    _install(v)
    defaults, unit_files = _configure(v)
    role_rules(v, "exporters", list(v["exporters__firewall_rules"]))  # firewall.yml
    _service(v, defaults, unit_files)
