"""Security of the deployed lab, beyond what each component's own tests check.

- Redis, MongoDB and etcd refuse a client without credentials. From an app host (a tier the
  host firewall lets through) each answers an unauthenticated command with its "authenticate
  first" error; from the load balancer host (outside the tiers that need them) the firewall
  drops the connection. None serves data.
- HAProxy's runtime API is a UNIX socket only: no `stats socket` or master CLI on a TCP address,
  and none of HAProxy's TCP listeners answers runtime commands.
- The master's gRPC service refuses a client without the shared token, or with a wrong one;
  the same call with the token is served (so the refusal is the token check).
- The generated secrets on the controller are readable by their owner only.

Run after `ansible-playbook site.yml`: `python -m pytest tests/lab/test_security.py`.
"""

from __future__ import annotations

import json
import shlex
import stat
import uuid

import grpc
import pytest
from clusterkit_app.master import TOKEN_HEADER
from clusterkit_app.pb import jobs_pb2 as pb
from clusterkit_app.pb import jobs_pb2_grpc as pb_grpc

from tests.conftest import (
    INVENTORY,
    address,
    group_hosts,
    inventory,
    secret,
    setting,
    testinfra_host,
)

LB_HOSTS = group_hosts("lb")
MASTER_HOSTS = group_hosts("app_master")


def lab_host(name: str):
    """Testinfra host: `docker exec` into a lab container, Ansible for any other host."""
    return testinfra_host(name)


@pytest.fixture(scope="module")
def lb():
    assert LB_HOSTS, "inventory has no host in group lb"
    return lab_host(LB_HOSTS[0])


# ---------------------------------------------------------------------------------------------
# Data tier, seen from the load balancer host
# ---------------------------------------------------------------------------------------------

# Runs on the lb host with its own python3 (no client libraries there): one unauthenticated
# probe per service; prints {"service@addr:port": "blocked" | "auth-required" | "OPEN ..."}.
PROBE = r"""
import json, socket, struct, sys, urllib.error, urllib.request

def connect(host, port):
    try:
        return socket.create_connection((host, port), timeout=3)
    except OSError:
        return None

def redis(host, port):
    s = connect(host, port)
    if s is None:
        return "blocked"
    with s:
        s.sendall(b"PING\r\nKEYS *\r\n")
        answer = s.recv(4096)
    if answer.startswith(b"-NOAUTH"):
        return "auth-required"
    return "OPEN " + answer[:80].decode("latin-1")

def bson(fields):
    body = b""
    for name, value in fields:
        key = name.encode() + b"\x00"
        if isinstance(value, int):
            body += b"\x10" + key + struct.pack("<i", value)
        else:
            raw = value.encode() + b"\x00"
            body += b"\x02" + key + struct.pack("<i", len(raw)) + raw
    return struct.pack("<i", len(body) + 5) + body + b"\x00"

def mongodb(host, port):
    s = connect(host, port)
    if s is None:
        return "blocked"
    doc = bson([("listDatabases", 1), ("nameOnly", 1), ("$db", "admin")])
    payload = struct.pack("<I", 0) + b"\x00" + doc  # OP_MSG: flagBits, section kind 0, body
    header = struct.pack("<iiii", 16 + len(payload), 1, 0, 2013)
    with s:
        s.sendall(header + payload)
        answer = b""
        while len(answer) < 16 or len(answer) < struct.unpack("<i", answer[:4])[0]:
            chunk = s.recv(65536)
            if not chunk:
                break
            answer += chunk
    if b"Unauthorized" in answer or b"requires authentication" in answer:
        return "auth-required"
    return "OPEN " + answer[20:200].decode("latin-1")

def etcd(host, port):
    body = json.dumps({"key": "AA==", "range_end": "AA=="}).encode()  # every key
    req = urllib.request.Request(f"http://{host}:{port}/v3/kv/range", data=body, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=3) as resp:
            answer = resp.read().decode()
    except urllib.error.HTTPError as err:
        answer = err.read().decode()
    except OSError:
        return "blocked"
    if "user name is empty" in answer or "invalid auth token" in answer:
        return "auth-required"
    return "OPEN " + answer[:200]

probes = {"redis": redis, "mongodb": mongodb, "etcd": etcd}
out = {}
for kind, host, port in json.loads(sys.argv[1]):
    out[f"{kind}@{host}:{port}"] = probes[kind](host, port)
print(json.dumps(out))
"""


def data_endpoints() -> list[tuple[str, str, int]]:
    ends = [("redis", address(h), int(setting(h, "redis_port"))) for h in group_hosts("redis")]
    ends += [
        ("mongodb", address(h), int(setting(h, "mongodb_port"))) for h in group_hosts("mongodb")
    ]
    ends += [("etcd", address(h), int(setting(h, "etcd_client_port"))) for h in group_hosts("etcd")]
    return ends


def probe_from(name: str) -> dict[str, str]:
    ends = data_endpoints()
    assert ends, "inventory has no data tier"
    out = lab_host(name).check_output(
        f"python3 -c {shlex.quote(PROBE)} {shlex.quote(json.dumps(ends))}"
    )
    return dict(json.loads(out))


@pytest.fixture(scope="module")
def probes() -> dict[str, dict[str, str]]:
    # The lb host is in no tier that needs the data tier; an app worker host is in all of them.
    sources = {"lb": LB_HOSTS[0], "app": group_hosts("app_workers")[0]}
    return {tier: probe_from(name) for tier, name in sources.items()}


def expected(tier: str, endpoint: str) -> str:
    host = next(
        h
        for h in inventory()["_meta"]["hostvars"]
        if endpoint.split("@")[1].startswith(address(h) + ":")
    )
    firewalled = bool(setting(host, "firewall_enabled"))
    # A host's own services are not behind its firewall (one-host profile: the LB is the data host).
    own = host == LB_HOSTS[0]
    return "blocked" if tier == "lb" and firewalled and not own else "auth-required"


@pytest.mark.smoke
@pytest.mark.parametrize("tier", ["lb", "app"])
@pytest.mark.parametrize("kind", ["redis", "mongodb", "etcd"])
def test_data_tier_refuses_unauthenticated_clients(
    probes: dict[str, dict[str, str]], kind: str, tier: str
) -> None:
    mine = {k: v for k, v in probes[tier].items() if k.startswith(kind + "@")}
    assert mine, f"no {kind} endpoint probed"
    wrong = {k: v for k, v in mine.items() if v != expected(tier, k)}
    assert not wrong, f"from the {tier} host, expected {expected(tier, next(iter(mine)))}: {wrong}"


# ---------------------------------------------------------------------------------------------
# HAProxy runtime API
# ---------------------------------------------------------------------------------------------


def test_haproxy_runtime_api_is_a_unix_socket_only(lb) -> None:
    cfg = lb.file("/etc/haproxy/haproxy.cfg").content_string
    sockets = [line.split() for line in cfg.splitlines() if line.strip().startswith("stats socket")]
    assert sockets, "no runtime API socket configured"
    for words in sockets:
        assert words[2].startswith("/"), f"runtime API on a network address: {' '.join(words)}"
    # The master CLI (-S) of the running HAProxy: a UNIX path as well.
    cmdline = lb.check_output(
        "cat /proc/$(systemctl show -p MainPID --value haproxy)/cmdline | tr '\\0' ' '"
    )
    words = cmdline.split()
    if "-S" in words:
        target = words[words.index("-S") + 1]
        assert target.startswith(("/", "unix@")), f"master CLI on a network address: {target}"


def test_no_tcp_listener_of_the_lb_host_answers_runtime_commands(lb) -> None:
    # Every TCP listener of the host (ss cannot always name HAProxy's sockets: they are passed
    # from process to process across reloads), except Docker's embedded DNS.
    listeners = [
        local
        for local in lb.check_output("ss -Hltn | awk '{print $4}' | sort -u").split()
        if not local.startswith("127.0.0.11:")
    ]
    haproxy_ports = {int(setting(LB_HOSTS[0], "haproxy_api_port"))}
    assert {int(x.rsplit(":", 1)[1]) for x in listeners} >= haproxy_ports, listeners
    script = r"""
import json, socket, sys
out = {}
for listener in json.loads(sys.argv[1]):
    host, port = listener.rsplit(":", 1)
    host = {"*": "127.0.0.1", "0.0.0.0": "127.0.0.1", "[::]": "::1"}.get(host, host).strip("[]")
    try:
        with socket.create_connection((host, int(port)), timeout=3) as s:
            s.sendall(b"show info\nshow stat\n")
            s.settimeout(3)
            data = b""
            try:
                while chunk := s.recv(65536):
                    data += chunk
            except OSError:
                pass
    except OSError as exc:
        data = str(exc).encode()
    out[listener] = data[:300].decode("latin-1")
print(json.dumps(out))
"""
    answers = json.loads(
        lb.check_output(f"python3 -c {shlex.quote(script)} {shlex.quote(json.dumps(listeners))}")
    )
    runtime = {k: v for k, v in answers.items() if "Pid:" in v or "Name: HAProxy" in v}
    assert not runtime, f"runtime API answered over TCP: {runtime}"


# ---------------------------------------------------------------------------------------------
# The master's gRPC service
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def master_stub():
    assert MASTER_HOSTS, "inventory has no host in group app_master"
    target = f"{address(MASTER_HOSTS[0])}:{int(setting(MASTER_HOSTS[0], 'app_master_grpc_port'))}"
    with grpc.insecure_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=15)
        yield pb_grpc.JobDispatchStub(channel)


PROBE_WORKER = f"security-probe-{uuid.uuid4().hex[:8]}"
WRONG_TOKENS = {
    "none": lambda: None,
    "empty": lambda: "",
    "wrong": lambda: "wrong-token",
    "prefix": lambda: secret("app_grpc_token")[:-1],
    "longer": lambda: secret("app_grpc_token") + "x",
}


def call_master(stub, call: str, metadata: list[tuple[str, str]]) -> None:
    """One call of the master's service as a worker would make it, about a worker and a job
    that do not exist (nothing to lose even if a call were accepted)."""
    if call == "Subscribe":
        stream = stub.Subscribe(
            pb.SubscribeRequest(worker_id=PROBE_WORKER), metadata=metadata, timeout=10
        )
        next(iter(stream))
    elif call == "Ack":
        request = pb.AckRequest(job_id=f"{PROBE_WORKER}-job", worker_id=PROBE_WORKER, ok=True)
        stub.Ack(request, metadata=metadata, timeout=10)
    else:
        stub.Drain(pb.DrainRequest(worker_id=PROBE_WORKER), metadata=metadata, timeout=10)


@pytest.mark.smoke
@pytest.mark.parametrize("token", sorted(WRONG_TOKENS))
@pytest.mark.parametrize("call", ["Subscribe", "Ack", "Drain"])
def test_master_refuses_calls_without_the_token(master_stub, call: str, token: str) -> None:
    presented = WRONG_TOKENS[token]()
    metadata = [] if presented is None else [(TOKEN_HEADER, presented)]
    with pytest.raises(grpc.RpcError) as err:
        call_master(master_stub, call, metadata)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, err.value


def test_master_serves_the_same_call_with_the_token(master_stub) -> None:
    # Drain of a worker the master does not know changes nothing and answers 0 jobs in flight.
    reply = master_stub.Drain(
        pb.DrainRequest(worker_id=PROBE_WORKER),
        metadata=[(TOKEN_HEADER, secret("app_grpc_token"))],
        timeout=10,
    )
    assert reply.in_flight == 0


# ---------------------------------------------------------------------------------------------
# Generated secrets on the controller
# ---------------------------------------------------------------------------------------------


@pytest.mark.smoke
def test_generated_secrets_are_private_to_their_owner() -> None:
    secrets_dir = INVENTORY / ".secrets"
    assert secrets_dir.is_dir(), f"{secrets_dir} missing: deploy first"
    loose = {
        p.name: oct(stat.S_IMODE(p.stat().st_mode))
        for p in [secrets_dir, *secrets_dir.iterdir()]
        if stat.S_IMODE(p.stat().st_mode) & 0o077
    }
    assert not loose, f"readable by group or others: {loose}"
