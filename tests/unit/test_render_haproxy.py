"""Render the haproxy template the way Ansible does and check what HAProxy would read.

roles/haproxy/templates/haproxy.cfg.j2 is rendered for lb1 of the lab inventory
(tests.unit._render) with a representative app tier (two app hosts, two workers each). The output is
split into sections and checked; when a `haproxy` binary is on the controller, the file also
goes through `haproxy -c`, as the role's `validate:` step does.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.unit._render import render as render_template
from tests.unit._render import render_text

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "roles" / "haproxy" / "templates"
DEFAULTS = yaml.safe_load((ROOT / "roles" / "haproxy" / "defaults" / "main.yml").read_text())
SPECS = yaml.safe_load((ROOT / "roles" / "haproxy" / "meta" / "argument_specs.yml").read_text())
ROLE_VARS = yaml.safe_load((ROOT / "roles" / "haproxy" / "vars" / "main.yml").read_text())

SERVERS = [
    {"name": f"{host}-{port}", "address": address, "port": port}
    for host, address in (("app1", "10.77.0.21"), ("app2", "10.77.0.22"))
    for port in (8180, 8181)
]
HASH = "$6$0123456789abcdef$" + "x" * 86


# lb1 of the lab with a representative app tier (two app hosts, two workers each).
SCENARIO = {
    "haproxy_api_bind_addresses": ["10.77.0.10", "127.0.0.1"],
    "haproxy_stats_bind_addresses": ["10.77.0.10", "127.0.0.1"],
    "haproxy_stats_virtual_addresses": [],
    "haproxy_backend_servers": SERVERS,
    "haproxy_stats_password": "not-used-by-the-template",
    "haproxy_stats_password_hash": HASH,
    "haproxy_idle_close": True,
    "haproxy_legacy_servers": [],
}


def render(source: str | None = None, **overrides: object) -> str:
    """haproxy.cfg.j2 (or the template text `source`) for the scenario."""
    variables = {**SCENARIO, **overrides}
    if source:
        return render_text(source, "lb1", **variables)
    return render_template("haproxy/haproxy.cfg.j2", "lb1", **variables)


def sections(text: str) -> dict[str, list[list[str]]]:
    """{"<keyword> <name>": [[word, ...] per line]}: a section starts at column 0."""
    out: dict[str, list[list[str]]] = {}
    current = None
    for raw in text.splitlines():
        line = (
            raw.split("#", 1)[0].rstrip()
            if not raw.lstrip().startswith("log-format")
            else raw.rstrip()
        )
        if not line.strip():
            continue
        if not raw[0].isspace():
            current = line.strip()
            assert current not in out, f"section {current} twice"
            out[current] = []
        else:
            assert current is not None, f"directive outside a section: {raw!r}"
            out[current].append(line.split())
    return out


def directives(section: list[list[str]], keyword: str) -> list[list[str]]:
    return [words[1:] for words in section if words[0] == keyword]


def test_defaults_render_every_section() -> None:
    text = render()
    assert text.splitlines()[:3] == ["#", "# Ansible managed", "#"]
    assert "{{" not in text
    assert "{%" not in text
    assert list(sections(text)) == [
        "global",
        "defaults",
        "frontend api",
        "backend app_workers",
        "userlist stats_users",
        "frontend stats",
    ]


def test_backend_lists_every_worker_with_checks_and_limit() -> None:
    backend = sections(render())["backend app_workers"]
    assert directives(backend, "server") == [
        [s["name"], f"{s['address']}:{s['port']}"] for s in SERVERS
    ]
    assert directives(backend, "balance") == [["leastconn"]]
    assert directives(backend, "option") == [["httpchk"]]
    assert directives(backend, "http-check") == [
        ["send", "meth", "GET", "uri", "/healthz"],
        ["expect", "status", "200"],
    ]
    (default_server,) = directives(backend, "default-server")
    settings = dict(zip(default_server[1::2], default_server[2::2], strict=False))
    assert default_server[0] == "check"
    assert settings == {
        "inter": "2s",
        "fastinter": "500ms",
        "downinter": "2s",
        "fall": "2",
        "rise": "2",
        "observe": "layer4",
        "error-limit": "1",
        "on-error": "mark-down",
        "maxconn": "1",
    }


def test_a_worker_refusing_connections_is_taken_out_by_the_traffic_itself() -> None:
    """Between a worker's death and its failed checks, leastconn would pick the dead worker
    (no connections) for every request the busy live workers cannot take, and each such request
    would fail all its retries there; observing layer 4 marks it DOWN on the first refusal."""
    (default_server,) = directives(sections(render())["backend app_workers"], "default-server")
    text = " ".join(default_server)
    assert "observe layer4 error-limit 1 on-error mark-down" in text
    (off,) = directives(
        sections(render(haproxy_observe=""))["backend app_workers"], "default-server"
    )
    assert "observe" not in off
    assert "on-error" not in off


def test_dead_worker_is_detected_within_about_three_seconds() -> None:
    """A dead worker refuses the connection: its first failed check comes within `inter`, the
    next ones every `fastinter`, so it is DOWN after inter + (fall - 1) x fastinter; a hung one
    after `fall` checks that each time out."""
    seconds = {"500ms": 0.5, "1s": 1.0, "2s": 2.0}
    inter = seconds[DEFAULTS["haproxy_health_check_inter"]]
    fastinter = seconds[DEFAULTS["haproxy_health_check_fastinter"]]
    check = seconds[DEFAULTS["haproxy_timeout_check"]]
    fall = DEFAULTS["haproxy_health_check_fall"]
    assert inter + (fall - 1) * fastinter <= 3.0
    assert inter + check + (fall - 1) * (fastinter + check) <= 7.0


def test_no_worker_limit_when_maxconn_is_zero() -> None:
    backend = sections(render(haproxy_server_maxconn=0))["backend app_workers"]
    (default_server,) = directives(backend, "default-server")
    assert "maxconn" not in default_server


@pytest.mark.parametrize("algorithm", ROLE_VARS["haproxy_balance_choices"])
def test_balance_choices_match_the_argument_spec(algorithm: str) -> None:
    spec = SPECS["argument_specs"]["main"]["options"]["haproxy_balance"]
    assert algorithm in spec["choices"]
    assert directives(
        sections(render(haproxy_balance=algorithm))["backend app_workers"], "balance"
    ) == [[algorithm]]


def test_every_default_is_declared_in_the_argument_spec() -> None:
    options = SPECS["argument_specs"]["main"]["options"]
    assert sorted(DEFAULTS) == sorted(options)


def test_defaults_section_has_retries_redispatch_and_explicit_timeouts() -> None:
    defaults = sections(render())["defaults"]
    timeouts = {words[0]: words[1] for words in directives(defaults, "timeout")}
    assert set(timeouts) == {
        "connect",
        "client",
        "server",
        "queue",
        "http-request",
        "http-keep-alive",
        "check",
    }
    assert ["redispatch", "1"] in directives(defaults, "option")
    assert ["idle-close-on-response"] in directives(defaults, "option")
    assert directives(defaults, "retries") == [["3"]]
    assert directives(defaults, "retry-on") == [["conn-failure", "empty-response"]]
    assert directives(defaults, "load-server-state-from-file") == [["global"]]
    older = sections(render(haproxy_idle_close=False, haproxy_server_state_file=""))
    assert ["idle-close-on-response"] not in directives(older["defaults"], "option")
    assert directives(older["global"], "server-state-file") == []


def test_runtime_socket_is_admin_for_root_and_group_haproxy() -> None:
    (socket,) = directives(sections(render())["global"], "stats")[:1]
    assert socket[:2] == ["socket", "/run/haproxy/admin.sock"]
    opts = socket[2:]
    assert opts[opts.index("mode") + 1] == "660"
    assert opts[opts.index("level") + 1] == "admin"
    assert opts[opts.index("user") + 1] == "root"
    assert opts[opts.index("group") + 1] == "haproxy"
    assert "expose-fd" in opts


def test_stats_frontend_asks_for_credentials_before_metrics() -> None:
    parsed = sections(render())
    assert directives(parsed["userlist stats_users"], "user") == [["admin", "password", HASH]]
    stats = parsed["frontend stats"]
    assert directives(stats, "bind") == [["10.77.0.10:8404"], ["127.0.0.1:8404"]]
    rules = [" ".join(words) for words in directives(stats, "http-request")]
    assert rules[0].startswith("auth realm clusterkit-haproxy unless { http_auth(stats_users) }")
    assert rules[1] == "use-service prometheus-exporter if { path /metrics }"
    public = [
        " ".join(w)
        for w in directives(
            sections(render(haproxy_prometheus_auth=False))["frontend stats"], "http-request"
        )
    ]
    assert public[0].startswith("use-service prometheus-exporter")


def test_stats_can_be_turned_off() -> None:
    parsed = sections(render(haproxy_stats_enabled=False))
    assert "frontend stats" not in parsed
    assert "userlist stats_users" not in parsed


def test_api_frontend_binds_private_address_and_loopback() -> None:
    api = sections(render())["frontend api"]
    assert directives(api, "bind") == [["10.77.0.10:8000"], ["127.0.0.1:8000"]]
    assert directives(api, "default_backend") == [["app_workers"]]


@pytest.mark.parametrize(
    ("variable", "section"),
    [
        ("haproxy_extra_global", "global"),
        ("haproxy_extra_defaults", "defaults"),
        ("haproxy_extra_frontend", "frontend api"),
        ("haproxy_extra_backend", "backend app_workers"),
    ],
)
def test_escape_hatches_land_in_their_section(variable: str, section: str) -> None:
    parsed = sections(render(**{variable: "bogus_directive on\nanother one"}))
    assert ["bogus_directive", "on"] in parsed[section]
    assert ["another", "one"] in parsed[section]


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="no haproxy binary on the controller")
def test_haproxy_accepts_the_rendered_file(tmp_path: Path) -> None:
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(
        render(haproxy_runtime_socket=str(tmp_path / "admin.sock"), haproxy_server_state_file="")
    )
    result = subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_stats_answer_on_the_virtual_address_with_transparent() -> None:
    # The VIP is held by one LB at a time: `transparent` (a non-local bind) lets both bind it.
    stats = sections(render(haproxy_stats_virtual_addresses=["10.77.0.100"]))["frontend stats"]
    binds = [line for line in stats if line[0] == "bind"]
    assert binds == [
        ["bind", "10.77.0.10:8404"],
        ["bind", "127.0.0.1:8404"],
        ["bind", "10.77.0.100:8404", "transparent"],
    ]


# -- moving traffic from legacy servers (haproxy_legacy_backends) ---------------------------

LEGACY = [{"name": "legacy1", "address": "127.0.0.1", "port": 9100}]


def derived(**overrides: object):
    """The role's defaults and vars as Ansible's own Templar resolves them (vars/ over the
    inventory, like a play)."""
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import Templar, trust_as_template

    from tests.unit._render import trusted

    variables = {**trusted(DEFAULTS), **overrides, **trusted(ROLE_VARS)}
    templar = Templar(loader=DataLoader(), variables=variables)
    return lambda name: templar.template(trust_as_template("{{ " + name + " }}"))


def shifted(percent: int = 0, **overrides) -> str:
    return render(haproxy_legacy_servers=LEGACY, haproxy_traffic_shift_percent=percent, **overrides)


def test_without_legacy_servers_the_config_is_the_one_before_the_feature() -> None:
    """Byte for byte what the template rendered before haproxy_legacy_backends existed: the
    template as of the commit that added it, without its additions, renders the same text."""
    text = render()
    assert "abns@" not in text
    assert "api_split" not in text
    assert "\nbackend legacy" not in text
    assert directives(sections(text)["frontend api"], "default_backend") == [["app_workers"]]
    assert derived()("haproxy_legacy_servers") == []
    source = (TEMPLATES / "haproxy.cfg.j2").read_text()
    start = source.index("{% if haproxy_legacy_servers | length > 0 %}\n#   backend")
    header_end = source.index("{% endif %}\n", start) + len("{% endif %}\n")
    before = source[:start] + source[header_end:]
    before = before.replace(
        "default_backend {{ haproxy_split_backend_name if haproxy_legacy_servers | length > 0 "
        "else haproxy_backend_name }}",
        "default_backend {{ haproxy_backend_name }}",
    )
    start = before.index("{% if haproxy_legacy_servers | length > 0 %}\n{%   set _new")
    end = before.index("{% endif %}\n{% if haproxy_stats_enabled", start) + len("{% endif %}\n")
    before = before[:start] + before[end:]
    assert "legacy" not in before
    assert render(before) == text


def test_legacy_backends_are_normalised_from_dicts_and_strings() -> None:
    get = derived(
        haproxy_legacy_backends=[
            {"name": "legacy1", "address": "10.0.0.5", "port": 8080},
            {"address": "10.0.0.6", "port": "8081"},
            "old-api.example.org:80",
            "[fd00::7]:8082",
            "no-port",
        ]
    )
    assert get("haproxy_legacy_servers") == [
        {"name": "legacy1", "address": "10.0.0.5", "port": 8080},
        {"name": "10.0.0.6-8081", "address": "10.0.0.6", "port": 8081},
        {"name": "old-api.example.org-80", "address": "old-api.example.org", "port": 80},
        {"name": "fd00::7-8082", "address": "fd00::7", "port": 8082},
        {"name": "no-port-", "address": "no-port", "port": ""},
    ]


def test_api_frontend_goes_to_the_split_backend_when_legacy_servers_are_set() -> None:
    parsed = sections(shifted())
    assert directives(parsed["frontend api"], "default_backend") == [["api_split"]]
    assert list(parsed) == [
        "global",
        "defaults",
        "frontend api",
        "backend app_workers",
        "backend api_split",
        "frontend api_split_new",
        "frontend api_split_legacy",
        "backend legacy",
        "userlist stats_users",
        "frontend stats",
    ]
    # The workers' backend is the one without a shift: same lines.
    assert parsed["backend app_workers"] == sections(render())["backend app_workers"]


@pytest.mark.parametrize(("percent", "new", "legacy"), [(0, 0, 100), (10, 10, 90), (100, 100, 0)])
def test_split_backend_weights_are_the_shares(percent: int, new: int, legacy: int) -> None:
    split = sections(shifted(percent))["backend api_split"]
    assert split == [
        ["balance", "roundrobin"],
        ["server", "new", "abns@clusterkit-api_split-new", "weight", str(new)],
        ["server", "legacy", "abns@clusterkit-api_split-legacy", "weight", str(legacy)],
    ]


def test_internal_listeners_front_each_side_over_abstract_sockets() -> None:
    parsed = sections(shifted(10))
    assert parsed["frontend api_split_new"] == [
        ["bind", "abns@clusterkit-api_split-new"],
        ["default_backend", "app_workers"],
    ]
    assert parsed["frontend api_split_legacy"] == [
        ["bind", "abns@clusterkit-api_split-legacy"],
        ["default_backend", "legacy"],
    ]


def test_legacy_backend_has_its_own_check_tcp_by_default() -> None:
    tcp = sections(shifted())["backend legacy"]
    assert [" ".join(words) for words in tcp] == [
        "balance leastconn",
        "default-server check inter 2s fastinter 500ms downinter 2s fall 2 rise 2 "
        "observe layer4 error-limit 1 on-error mark-down",
        "server legacy1 127.0.0.1:9100",
    ]
    http = sections(shifted(haproxy_legacy_health_check_path="/status"))["backend legacy"]
    assert directives(http, "option") == [["httpchk"]]
    assert directives(http, "http-check") == [
        ["send", "meth", "GET", "uri", "/status"],
        ["expect", "status", "200"],
    ]


def test_shift_names_follow_their_variables() -> None:
    parsed = sections(
        shifted(50, haproxy_split_backend_name="split", haproxy_legacy_backend_name="old_api")
    )
    assert directives(parsed["frontend api"], "default_backend") == [["split"]]
    assert directives(parsed["frontend split_legacy"], "default_backend") == [["old_api"]]
    assert "backend old_api" in parsed


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="no haproxy binary on the controller")
@pytest.mark.parametrize("percent", [0, 10, 100])
def test_haproxy_accepts_the_shifted_file(tmp_path: Path, percent: int) -> None:
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(
        shifted(
            percent,
            haproxy_legacy_health_check_path="/healthz",
            haproxy_runtime_socket=str(tmp_path / "admin.sock"),
            haproxy_server_state_file="",
        )
    )
    result = subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_stats_requests_stay_out_of_the_log_on_every_release() -> None:
    # bookworm (HAProxy 2.6): `no log`.
    stats = sections(render(haproxy_stats_log_off="no-log"))["frontend stats"]
    assert ["no", "log"] in stats
    assert not [w for w in directives(stats, "http-request") if w[0] == "set-log-level"]
    # trixie (HAProxy 3.0 warns about `no log` under an inherited `option httplog`): the
    # requests are logged at level silent, before any other rule.
    stats = sections(render(haproxy_stats_log_off="silent"))["frontend stats"]
    assert ["no", "log"] not in stats
    assert directives(stats, "http-request")[0] == ["set-log-level", "silent"]
    by_release = DEFAULTS["haproxy_stats_log_off_by_release"]
    assert (by_release["bookworm"], by_release["trixie"]) == ("no-log", "silent")
