"""The clusterkit deploy for pyinfra: the roles of site.yml (common, firewall, redis, mongodb, etcd,
app, haproxy, nginx, keepalived, loadgen, exporters, monitoring) on the hosts of the Ansible
inventory, rendering the same templates with the same variables and secrets.

    pyinfra -y pyinfra_deploy/inventory.py pyinfra_deploy/deploy.py

Operations run in the order of this file, each on every host it applies to, so the data tier
is up before the app tier and the app tier before the front ends, as with site.yml.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyinfra import host  # noqa: E402

from pyinfra_deploy import roles  # noqa: E402
from pyinfra_deploy.keepalived import keepalived  # noqa: E402
from pyinfra_deploy.monitoring import exporters, monitoring  # noqa: E402
from pyinfra_deploy.redis import redis  # noqa: E402
from pyinfra_deploy.variables import world  # noqa: E402

v = world()[host.data.inventory_hostname]
groups = set(v["group_names"])
roles.host_release(v)
if groups & {"app_master", "app_workers"}:
    roles.app_refuse_unsupported(v)

roles.common(v)
roles.firewall(v)
roles.barrier("base system")
if "redis" in groups:
    redis(v)
roles.barrier("redis")
if "mongodb" in groups:
    roles.mongodb(v)
roles.barrier("mongodb")
if "etcd" in groups:
    roles.etcd(v)
roles.barrier("etcd")
if groups & {"app_master", "app_workers"}:
    roles.app(v)
roles.barrier("app")
if "lb" in groups:
    roles.haproxy(v)
    roles.nginx(v)
roles.barrier("front ends")
# One virtual address for two or more load balancers (none for a single one).
if "lb" in groups and len(v["groups"]["lb"]) > 1:
    keepalived(v)
roles.barrier("keepalived")
if "loadgen" in groups:
    roles.loadgen(v)
roles.barrier("loadgen")
# Monitoring (playbooks/monitoring.yml): exporters on every host while group monitoring has
# hosts, then Prometheus and Alertmanager on those hosts.
if v["groups"].get("monitoring"):
    exporters(v)
roles.barrier("exporters")
if "monitoring" in groups:
    monitoring(v)
