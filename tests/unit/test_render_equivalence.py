"""Every template in roles/*/templates/ renders byte for byte the same through both engines.

The variables are the lab's, resolved by the pyinfra deploy's own code (role defaults and
vars over the inventory, secrets generated into a copy of the inventory), plus the task
variables each role passes. The same values go to Ansible's `ansible.builtin.template`
(one ansible-playbook run on localhost) and to pyinfra_deploy.templating.render; the
outputs must be identical, `{{ ansible_managed | comment }}` header included.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jinja2.meta
import pytest

from pyinfra_deploy.templating import ROLES, Layers, environment, render
from pyinfra_deploy.variables import ROOT
from tests.unit._render import lab

DROPIN = {"Service": {"PrivateUsers": False, "ExecStart": ["", "/usr/bin/x --y"], "Restart": 5}}
RULES = [
    {"name": "a", "proto": "tcp", "ports": [6379], "any": False, "v4": ["10.0.0.1"], "v6": []},
    {"name": "b", "proto": "udp", "ports": [1, 2], "any": True, "v4": [], "v6": []},
    {
        "name": "c",
        "proto": "tcp",
        "ports": [],
        "any": False,
        "v4": ["10.0.0.0/8"],
        "v6": ["fd00::1"],
    },
    {"name": "d", "proto": "tcp", "ports": [9], "any": False, "v4": [], "v6": []},
    {"name": "e", "proto": "vrrp", "ports": [], "any": False, "v4": ["10.0.0.2"], "v6": []},
]
# (template, host, task variables): every template at least once, some with more than one
# set of values (branches of the template).
CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("app/clusterkit-app.target.j2", "app1", {}),
    ("app/clusterkit-master.service.j2", "app1", {}),
    ("app/clusterkit-worker@.service.j2", "app2", {}),
    (
        "app/environment.j2",
        "app1",
        {"app_env_description": "shared", "app_env_vars": "@app_env_shared"},
    ),
    ("app/environment.j2", "app1", {"app_env_description": "m", "app_env_vars": "@app_env_master"}),
    (
        "app/environment.j2",
        "app2",
        {"app_env_description": "w", "app_env_vars": {"A": 'x"$`\\y', "B": None, "C": 3}},
    ),
    ("app/podman-containers.conf.j2", "app1", {}),
    ("app/podman-storage.conf.j2", "app1", {}),
    ("common/limits.conf.j2", "data1", {}),
    ("common/sysctl.conf.j2", "data1", {}),
    (
        "etcd/etcd.conf.yml.j2",
        "data2",
        {
            "etcd__initial_cluster": "@etcd__group_initial_cluster",
            "etcd__initial_cluster_state": "new",
        },
    ),
    (
        "etcd/etcd.conf.yml.j2",
        "data3",
        {
            "etcd__initial_cluster": "data3=http://10.77.0.33:2380",
            "etcd__initial_cluster_state": "existing",
            "etcd_extra_config": {"snapshot-count": 10000},
        },
    ),
    (
        "haproxy/haproxy.cfg.j2",
        "lb1",
        {"haproxy_idle_close": True, "haproxy_stats_password_hash": "$6$abc$def"},
    ),
    (
        "haproxy/haproxy.cfg.j2",
        "lb1",
        {
            "haproxy_idle_close": False,
            "haproxy_stats_enabled": False,
            "haproxy_extra_backend": "a\nb",
            "haproxy_stats_password_hash": "",
        },
    ),
    ("firewall/nftables.conf.j2", "data1", {}),
    ("firewall/nftables.conf.j2", "data1", {"firewall_log_dropped": True}),
    (
        "firewall/rules.nft.j2",
        "data1",
        {"firewall_rules_name": "x", "firewall__rules_resolved": RULES},
    ),
    ("keepalived/check-frontend.sh.j2", "lb1", {}),
    ("keepalived/keepalived.conf.j2", "lb1", {"keepalived__interface": "eth0"}),
    (
        "keepalived/keepalived.conf.j2",
        "lb2",
        {"keepalived__interface": "ens3", "keepalived_nopreempt": False},
    ),
    ("keepalived/keepalived.default.j2", "lb2", {}),
    ("lab/Dockerfile.base.j2", "lb1", {}),
    ("lab/Dockerfile.j2", "lb1", {}),
    (
        "loadgen/locust-worker.service.j2",
        "app1",
        {"loadgen_master_host": "10.77.0.1", "loadgen_worker_extra_args": ["a b", '%"$']},
    ),
    ("mongodb/logrotate.j2", "data1", {}),
    ("mongodb/mongod.conf.j2", "data1", {}),
    (
        "mongodb/mongod.conf.j2",
        "data2",
        {"mongodb_wiredtiger_cache_size_gb": 0.25, "mongodb_oplog_size_mb": 128},
    ),
    ("mongodb/mongod.service.j2", "data3", {"mongodb_bin": "/usr/local/bin/mongod"}),
    ("monitoring/prometheus.yml.j2", "mon1", {}),
    (
        "monitoring/prometheus.yml.j2",
        "mon1",
        {"monitoring_external_labels": {}, "monitoring_extra_scrape_configs": [{"job_name": "x"}]},
    ),
    ("monitoring/alertmanager.yml.j2", "mon1", {}),
    (
        "monitoring/default.j2",
        "data1",
        {
            "monitoring_default_unit": "prometheus-redis-exporter.service",
            "monitoring_default_args": "@exporters__redis_args",
            "monitoring_default_env": {"REDIS_PASSWORD": 'p"w'},
        },
    ),
    (
        "monitoring/default.j2",
        "mon1",
        {
            "monitoring_default_unit": "prometheus.service",
            "monitoring_default_args": "@monitoring__prometheus_args",
            "monitoring_default_env": {},
        },
    ),
    ("exporters/mongodb-metrics.service.j2", "data1", {}),
    ("exporters/mongodb-metrics.timer.j2", "data2", {}),
    ("nginx/index.html.j2", "lb1", {}),
    ("nginx/nginx.conf.j2", "lb1", {}),
    (
        "nginx/nginx.conf.j2",
        "lb1",
        {
            "nginx_tls_enabled": True,
            "nginx_rate_limit_enabled": True,
            "nginx_listen_addresses": ["10.77.0.10", "127.0.0.1"],
            "nginx_extra_http_config": "x 1;\ny 2;",
        },
    ),
    # trixie's nginx 1.26: `http2 on;` instead of the `listen` parameter.
    ("nginx/nginx.conf.j2", "lb1", {"nginx_tls_enabled": True, "nginx_http2_directive": True}),
    ("redis/auth.conf.j2", "data1", {}),
    ("redis/redis.conf.j2", "data1", {}),
    ("redis/redis.conf.j2", "data2", {"redis_sentinel_enabled": False}),
    ("redis/auth.conf.j2", "data2", {"redis_sentinel_enabled": False}),
    ("redis/ha.conf.j2", "data2", {}),
    (
        "redis/sentinel.conf.j2",
        "data3",
        {"redis__primary_host": "10.77.0.31", "redis__primary_port": "6379"},
    ),
    ("redis/redis.conf.j2", "data1", {"redis_save": [], "redis_extra_config": {"a-b": 1}}),
    ("common/dropin.conf.j2", "data1", {"common_dropin_settings": DROPIN}),
]


def test_every_template_has_a_case() -> None:
    names = {f"{p.parts[-3]}/{p.name}" for p in ROLES.glob("*/templates/*.j2")}
    assert names == {case[0] for case in CASES}


def source_path(name: str) -> Path:
    """The file behind "<role>/<file>": roles/<role>/templates/<file>."""
    role, file = name.split("/", 1)
    return ROLES / role / "templates" / file


def plain(value: Any) -> Any:
    """A JSON round trip: what Ansible gets is exactly what pyinfra renders with."""
    return json.loads(json.dumps(value))


@pytest.fixture(scope="session")
def both(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, str, str]]:
    tmp = tmp_path_factory.mktemp("equivalence")
    # The lab runs bookworm; a trixie value is a case's own (e.g. nginx_http2_directive).
    world = lab()
    lab_defaults = {
        "lab_base_image": "clusterkit/debian-base:bookworm",
        "lab_debian_mirror": "http://deb.debian.org/debian",
        "lab_debian_suite": "bookworm",
        "lab_debian_security_mirror": "http://deb.debian.org/debian-security",
    }
    tasks, cases = [], []
    for index, (name, host, extra) in enumerate(CASES):
        hostvars = world[host]
        task_vars = {
            k: (hostvars[v[1:]] if isinstance(v, str) and v.startswith("@") else v)
            for k, v in extra.items()
        }
        task_vars = {**lab_defaults, **task_vars}
        layers = Layers(task_vars, hostvars)
        source = environment().loader.get_source(environment(), name)[0]
        needed = jinja2.meta.find_undeclared_variables(environment().parse(source))
        values = plain(
            {k: layers[k] for k in sorted(needed) if k in layers and k != "ansible_managed"}
        )
        values.update(plain(task_vars))
        assert "{{" not in json.dumps(values), f"{name}: a value would be templated again"
        pyinfra_out = render(name, values)
        dest = tmp / f"{index}.out"
        tasks.append(
            {
                "name": f"render {name}",
                "ansible.builtin.template": {"src": str(source_path(name)), "dest": str(dest)},
                "vars": values,
            }
        )
        cases.append((f"{name}#{index}", pyinfra_out, str(dest)))
    playbook = tmp / "render.yml"
    playbook.write_text(
        json.dumps([{"hosts": "localhost", "gather_facts": False, "tasks": tasks}], indent=1)
    )
    run = subprocess.run(
        [
            "ansible-playbook",
            "-i",
            "localhost,",
            "-c",
            "local",
            "-e",
            f"ansible_python_interpreter={sys.executable}",
            str(playbook),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    return [(case, out, Path(dest).read_text()) for case, out, dest in cases]


# One test over every case: the fixture's ansible-playbook run takes about a minute, and a
# parametrized test would have each xdist worker that gets a case pay for it again.
def test_pyinfra_renders_what_ansible_renders(both: list[tuple[str, str, str]]) -> None:
    differ = [case for case, pyinfra_out, ansible_out in both if pyinfra_out != ansible_out]
    unmanaged = [case for case, _, ansible_out in both if "Ansible managed" not in ansible_out]
    assert not differ, f"pyinfra and Ansible render differently: {differ}"
    assert not unmanaged, f"no ansible_managed header: {unmanaged}"
