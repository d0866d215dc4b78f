"""The cluster as a whole, seen from etcd-1: membership, the later join, one-at-a-time
restarts, and client authentication, including the role switching it off and on."""

import json
import os
import subprocess
from pathlib import Path

from conftest import MEMBERS, etcdctl, inventory_file, member

testinfra_hosts = ["ansible://etcd-1"]

PROJECT = Path(__file__).resolve().parents[3]


def test_three_started_members(host):
    members = json.loads(etcdctl(host, "member", "list", "--write-out=json").stdout)["members"]
    assert sorted(m.get("name", "") for m in members) == MEMBERS
    assert all(m.get("clientURLs") for m in members), "a member was added but never started"


def test_every_member_healthy(host, root_password):
    args = ("endpoint", "health", "--cluster", "--write-out=json")
    result = etcdctl(host, *args, user="root", password=root_password)
    assert result.rc == 0, result.stderr
    assert [e["health"] for e in json.loads(result.stdout)] == [True] * 3


def test_later_host_joined_the_running_cluster():
    # etcd-1 and etcd-2 bootstrapped a new two-member cluster; etcd-3 came later and was
    # added with `member add`, then started with state `existing` and the membership etcd
    # returned. The role keeps each member's bootstrap values afterwards.
    def config(name):
        return member(name).file("/etc/etcd/etcd.conf.yml").content_string

    assert 'initial-cluster-state: "new"' in config("etcd-1")
    joined = config("etcd-3")
    assert 'initial-cluster-state: "existing"' in joined
    assert all(f"{name}=http://" in joined for name in MEMBERS)


def test_restarts_were_one_at_a_time():
    # Each member's last (re)start, from ExecMainStart to ready (Type=notify): the converge's
    # last play restarted etcd-1 and etcd-2 for a changed setting after etcd-3 joined. The
    # role restarts one member and waits for cluster health before the next, so no two
    # spans overlap. The containers share the kernel's monotonic clock.
    spans = []
    for name in MEMBERS:
        out = member(name).check_output(
            "systemctl show etcd"
            " -p ExecMainStartTimestampMonotonic -p ActiveEnterTimestampMonotonic"
        )
        props = dict(line.split("=", 1) for line in out.splitlines())
        start = int(props["ExecMainStartTimestampMonotonic"])
        spans.append((start, int(props["ActiveEnterTimestampMonotonic"]), name))
    spans.sort()
    for (_, ready, first), (start, _, second) in zip(spans, spans[1:], strict=False):
        assert ready <= start, f"{second} (re)started before {first} was ready"


def test_anonymous_requests_refused(host):
    result = etcdctl(host, "put", "/clusterkit/anonymous", "x")
    assert result.rc != 0
    assert "user name is empty" in result.stderr


def test_app_user_writes_under_its_prefix_only(host, app_password):
    ok = etcdctl(host, "put", "/clusterkit/molecule", "v", user="clusterkit", password=app_password)
    assert ok.rc == 0, ok.stderr
    got = etcdctl(host, "get", "/clusterkit/molecule", "--print-value-only",
                  user="clusterkit", password=app_password)  # fmt: skip
    assert got.stdout.strip() == "v"
    denied = etcdctl(host, "put", "/elsewhere", "v", user="clusterkit", password=app_password)
    assert denied.rc != 0
    assert "permission denied" in denied.stderr


def test_wrong_password_refused(host):
    result = etcdctl(host, "get", "/clusterkit/molecule", user="clusterkit", password="wrong")
    assert result.rc != 0
    assert "authentication failed" in result.stderr


def run_auth_step(enabled: bool) -> str:
    """The role's auth step alone, with etcd_auth_enabled set; returns ansible's output."""
    env = dict(os.environ, ANSIBLE_ROLES_PATH=str(PROJECT / "roles"), ANSIBLE_FORCE_COLOR="0")
    result = subprocess.run(
        ["ansible-playbook", "-i", inventory_file(), str(PROJECT / "molecule/etcd/auth_switch.yml"),
         "-e", json.dumps({"etcd_auth_enabled": enabled})],
        env=env, capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    return result.stdout


# Leaves auth on, as it found it.
def test_auth_switch_off_and_on_again(host, app_password):
    run_auth_step(False)
    try:
        anonymous = etcdctl(host, "put", "/anywhere", "x")
        assert anonymous.rc == 0, anonymous.stderr
    finally:
        run_auth_step(True)
    assert etcdctl(host, "put", "/anywhere", "y").rc != 0
    app = etcdctl(host, "put", "/clusterkit/again", "v", user="clusterkit", password=app_password)
    assert app.rc == 0, app.stderr
    # A second run with auth on changes nothing.
    assert "changed=0 " in run_auth_step(True)


def test_json_gateway_serves_the_app_client(host, app_password):
    # The app's client speaks the v3 API as JSON over HTTP (/v3/...), the gRPC gateway.
    script = (
        "import json, sys, urllib.request as u\n"
        "def post(path, body, token=None):\n"
        "    headers = {'Authorization': token} if token else {}\n"
        "    req = u.Request('http://127.0.0.1:2379' + path, json.dumps(body).encode(), headers)\n"
        "    return json.load(u.urlopen(req, timeout=10))\n"
        "token = post('/v3/auth/authenticate', {'name': 'clusterkit', 'password': sys.argv[1]})\n"
        "print(json.dumps(post('/v3/kv/put', {'key': 'L2NsdXN0ZXJraXQvZ3c=', 'value': 'dg=='},"
        " token['token'])))\n"
    )
    result = host.run("python3 -c %s %s", script, app_password)
    assert result.rc == 0, result.stderr
    assert "revision" in json.loads(result.stdout)["header"]
