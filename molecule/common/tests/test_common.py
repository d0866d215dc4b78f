"""Verify the common role on a real systemd container."""

import pytest

testinfra_hosts = ["ansible://all"]


@pytest.mark.parametrize("package", ["ca-certificates", "curl", "iproute2", "python3-apt"])
def test_base_packages_installed(host, package):
    assert host.package(package).is_installed


def test_sysctl_file_lists_network_settings(host):
    conf = host.file("/etc/sysctl.d/60-clusterkit.conf")
    assert conf.exists
    assert "net.core.somaxconn = 4096" in conf.content_string


def test_services_get_the_raised_open_file_limit(host):
    # systemd re-executed with the manager drop-in: the default applies to new units.
    out = host.check_output("systemctl show --property DefaultLimitNOFILE")
    assert out.strip() == "DefaultLimitNOFILE=65536"


def test_container_dropin_written_and_loaded(host):
    dropin = host.file("/etc/systemd/system/clusterkit-probe.service.d/clusterkit-container.conf")
    assert dropin.exists
    assert "PrivateUsers=no" in dropin.content_string
    assert "Environment=A=1\nEnvironment=B=2" in dropin.content_string
    loaded = host.check_output("systemctl show --property DropInPaths clusterkit-probe.service")
    assert dropin.path in loaded
