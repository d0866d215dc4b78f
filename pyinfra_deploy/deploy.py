"""The clusterkit deploy for pyinfra: the roles of site.yml (common, firewall, redis, mongodb,
etcd, app, haproxy, nginx, keepalived, exporters, monitoring) on the hosts of the Ansible
inventory, rendering the same templates with the same variables and secrets. The loadgen role
is Ansible's only: a host in group loadgen stops this deploy before any host changes (run
playbooks/loadgen.yml for it).

    pyinfra -y pyinfra_deploy/inventory.py pyinfra_deploy/deploy.py

Each role is a `@deploy` function of pyinfra_deploy/roles/<role>.py. Operations run in the
order of this file, each on every host it applies to, so the data tier is up before the app
tier and the app tier before the front ends, as with site.yml.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyinfra import host  # noqa: E402

from pyinfra_deploy.helpers import barrier  # noqa: E402
from pyinfra_deploy.roles.app import app, refuse_unsupported  # noqa: E402
from pyinfra_deploy.roles.common import common, host_release  # noqa: E402
from pyinfra_deploy.roles.etcd import etcd  # noqa: E402
from pyinfra_deploy.roles.exporters import exporters  # noqa: E402
from pyinfra_deploy.roles.firewall import firewall  # noqa: E402
from pyinfra_deploy.roles.haproxy import haproxy  # noqa: E402
from pyinfra_deploy.roles.keepalived import keepalived  # noqa: E402
from pyinfra_deploy.roles.loadgen import loadgen  # noqa: E402
from pyinfra_deploy.roles.mongodb import mongodb  # noqa: E402
from pyinfra_deploy.roles.monitoring import monitoring  # noqa: E402
from pyinfra_deploy.roles.nginx import nginx  # noqa: E402
from pyinfra_deploy.roles.redis import redis  # noqa: E402
from pyinfra_deploy.variables import world  # noqa: E402

v = world()[host.data.inventory_hostname]
groups = set(v["group_names"])
host_release(v)
if groups & {"app_master", "app_workers"}:
    refuse_unsupported(v)

common(v)
firewall(v)
barrier("base system")
if "redis" in groups:
    redis(v)
barrier("redis")
if "mongodb" in groups:
    mongodb(v)
barrier("mongodb")
if "etcd" in groups:
    etcd(v)
barrier("etcd")
if groups & {"app_master", "app_workers"}:
    app(v)
barrier("app")
if "lb" in groups:
    haproxy(v)
    nginx(v)
barrier("front ends")
# One virtual address for two or more load balancers (none for a single one).
if "lb" in groups and len(v["groups"]["lb"]) > 1:
    keepalived(v)
barrier("keepalived")
if "loadgen" in groups:
    loadgen(v)
barrier("loadgen")
# Monitoring (playbooks/monitoring.yml): exporters on every host while group monitoring has
# hosts, then Prometheus and Alertmanager on those hosts.
if v["groups"].get("monitoring"):
    exporters(v)
barrier("exporters")
if "monitoring" in groups:
    monitoring(v)
