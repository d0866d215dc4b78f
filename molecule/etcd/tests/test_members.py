"""Every member: runs the role's config only, listens where it should, reports healthy."""

import json

testinfra_hosts = ["ansible://etcd"]


def test_service_runs_the_clusterkit_config(host):
    service = host.service("etcd")
    assert service.is_running
    assert service.is_enabled
    cmdline = host.check_output("cat /proc/$(systemctl show -p MainPID --value etcd)/cmdline")
    expected = "/usr/bin/etcd --config-file /etc/etcd/etcd.conf.yml"
    assert cmdline.replace("\0", " ").strip() == expected


def test_packaged_default_member_never_started(host):
    # Installing etcd-server starts etcd.service; the role's drop-in keeps it from running the
    # package's single-node default, which would have created this directory.
    assert not host.file("/var/lib/etcd/default").exists
    assert host.file("/var/lib/etcd/clusterkit/member").is_directory
    assert host.file("/var/lib/etcd/clusterkit").mode == 0o700


def test_listens_for_clients_and_peers(host):
    address = (
        host.ansible.get_variables().get("clusterkit_address")
        or host.check_output("hostname -I").split()[0]
    )
    assert host.socket(f"tcp://{address}:2379").is_listening
    assert host.socket("tcp://127.0.0.1:2379").is_listening
    assert host.socket(f"tcp://{address}:2380").is_listening
    assert not host.socket("tcp://127.0.0.1:2380").is_listening


def test_member_reports_healthy(host):
    out = host.check_output(
        'python3 -c "import urllib.request as u; '
        "print(u.urlopen('http://127.0.0.1:2379/health').read().decode())\""
    )
    assert json.loads(out)["health"] == "true"
