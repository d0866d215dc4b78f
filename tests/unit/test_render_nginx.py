"""Render the nginx templates the way Ansible does and check what nginx would read.

roles/nginx/templates/nginx.conf.j2 is rendered for lb1 of the lab inventory
(tests.unit._render) with one upstream server and variations (TLS, redirect, rate limiting,
escape hatches). A small parser turns the output into a tree of directives, which is checked;
when an `nginx` binary is on the controller, the file also goes through `nginx -t`, as the
role's `validate:` step does.
"""

from __future__ import annotations

import html.parser
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.unit._render import render as render_template

ROOT = Path(__file__).resolve().parents[2]
DEFAULTS = yaml.safe_load((ROOT / "roles" / "nginx" / "defaults" / "main.yml").read_text())
SPECS = yaml.safe_load((ROOT / "roles" / "nginx" / "meta" / "argument_specs.yml").read_text())


def render(name: str = "nginx.conf.j2", **overrides: object) -> str:
    single = {"nginx_upstream_servers": ["127.0.0.1:8000"]}
    return render_template(f"nginx/{name}", "lb1", **{**single, **overrides})


@dataclass
class Directive:
    name: str
    args: list[str]
    block: list[Directive] | None = None

    def all(self, name: str) -> list[Directive]:
        return [d for d in self.block or [] if d.name == name]

    def one(self, name: str) -> Directive:
        found = self.all(name)
        assert len(found) == 1, f"{name}: {len(found)} times in {self.name} {self.args}"
        return found[0]

    def values(self, name: str) -> list[list[str]]:
        return [d.args for d in self.all(name)]


def tokenize(text: str) -> list[str]:
    """nginx's lexer in short: words, quoted strings, ; { } and # comments."""
    tokens, i, n = [], 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif ch in ";{}":
            tokens.append(ch)
            i += 1
        elif ch in "'\"":
            j = i + 1
            while j < n and text[j] != ch:
                j += 2 if text[j] == "\\" else 1
            assert j < n, "unterminated quote"
            tokens.append(text[i + 1 : j])
            i = j + 1
        else:
            j = i
            while j < n and not text[j].isspace() and text[j] not in ";{}'\"":
                j += 1
            # A word that runs into a quote (log_format '...' pieces) ends there.
            tokens.append(text[i:j])
            i = j
    return tokens


def parse(text: str) -> Directive:
    tokens = tokenize(text)
    pos = 0

    def block() -> list[Directive]:
        nonlocal pos
        out: list[Directive] = []
        while pos < len(tokens):
            if tokens[pos] == "}":
                pos += 1
                return out
            words = []
            while tokens[pos] not in {";", "{", "}"}:
                words.append(tokens[pos])
                pos += 1
            assert words, f"empty statement at token {pos}"
            if tokens[pos] == ";":
                pos += 1
                out.append(Directive(words[0], words[1:]))
            elif tokens[pos] == "{":
                pos += 1
                out.append(Directive(words[0], words[1:], block()))
            else:
                raise AssertionError(f"unexpected }} after {words}")
        return out

    root = Directive("main", [], block())
    assert pos == len(tokens), "unbalanced braces"
    return root


def api_location(server: Directive) -> Directive:
    (location,) = [d for d in server.all("location") if d.args == ["/api/"]]
    return location


def test_defaults_render_one_whole_config() -> None:
    text = render()
    assert text.splitlines()[:3] == ["#", "# Ansible managed", "#"]
    assert "{{" not in text
    assert "{%" not in text
    root = parse(text)
    assert root.values("include") == [["/etc/nginx/modules-enabled/*.conf"]]
    assert root.one("pid").args == ["/run/nginx.pid"]
    http = root.one("http")
    # Nothing else is pulled in: what `nginx -t -c` checks is what runs.
    assert http.values("include") == [["/etc/nginx/mime.types"]]
    assert len(http.all("server")) == 1


def test_api_is_proxied_to_haproxy_over_kept_alive_connections() -> None:
    http = parse(render()).one("http")
    upstream = http.one("upstream")
    assert upstream.args == ["clusterkit_api"]
    assert upstream.values("server") == [["127.0.0.1:8000", "max_fails=0"]]
    assert upstream.one("keepalive").args == ["64"]
    assert upstream.one("keepalive_timeout").args == ["30s"]
    location = api_location(http.one("server"))
    assert location.one("proxy_pass").args == ["http://clusterkit_api"]
    assert location.one("proxy_http_version").args == ["1.1"]
    headers = {args[0]: args[1] for args in location.values("proxy_set_header")}
    assert headers["Connection"] == ""
    assert headers["X-Request-Id"] == "$request_id"
    assert headers["X-Forwarded-For"] == "$proxy_add_x_forwarded_for"
    assert headers["X-Forwarded-Proto"] == "$scheme"
    assert headers["X-Forwarded-Host"] == "$host"
    assert location.one("proxy_next_upstream").args == ["off"]


def test_keepalive_closes_before_haproxy_does() -> None:
    haproxy = yaml.safe_load((ROOT / "roles" / "haproxy" / "defaults" / "main.yml").read_text())
    nginx_idle = int(DEFAULTS["nginx_upstream_keepalive_timeout"].rstrip("s"))
    haproxy_idle = int(haproxy["haproxy_timeout_http_keep_alive"].rstrip("s"))
    assert nginx_idle < haproxy_idle


def test_request_id_gzip_and_static_root() -> None:
    http = parse(render()).one("http")
    assert http.one("gzip").args == ["on"]
    assert "application/json" in http.one("gzip_types").args
    server = http.one("server")
    assert server.values("listen") == [["80", "default_server"]]
    assert server.one("add_header").args == ["X-Request-Id", "$request_id", "always"]
    assert server.one("root").args == ["/var/www/clusterkit"]
    assert "$request_id" in " ".join(http.one("log_format").args)


def test_stub_status_only_from_loopback() -> None:
    server = parse(render()).one("http").one("server")
    (status,) = [d for d in server.all("location") if d.args == ["=", "/nginx_status"]]
    assert status.one("stub_status").args == []
    assert status.values("allow") == [["127.0.0.1"], ["::1"]]
    assert status.values("deny") == [["all"]]


def test_tls_adds_an_https_server() -> None:
    http = parse(render(nginx_tls_enabled=True)).one("http")
    plain, tls = http.all("server")
    assert plain.values("listen") == [["80", "default_server"]]
    assert tls.values("listen") == [["443", "ssl", "http2", "default_server"]]
    assert tls.one("ssl_certificate").args == ["/etc/nginx/tls/clusterkit.crt"]
    assert tls.one("ssl_certificate_key").args == ["/etc/nginx/tls/clusterkit.key"]
    assert http.one("ssl_protocols").args == ["TLSv1.2", "TLSv1.3"]
    # Both serve the API.
    api_location(plain)
    api_location(tls)


def test_http2_directive_for_nginx_1_25_and_later() -> None:
    # trixie (nginx 1.26): `http2 on;` in the server, no `http2` on `listen`.
    http = parse(render(nginx_tls_enabled=True, nginx_http2_directive=True)).one("http")
    _, tls = http.all("server")
    assert tls.values("listen") == [["443", "ssl", "default_server"]]
    assert tls.one("http2").args == ["on"]
    # bookworm (nginx 1.22) knows only the `listen` parameter.
    http = parse(render(nginx_tls_enabled=True, nginx_http2_directive=False)).one("http")
    _, tls = http.all("server")
    assert tls.values("listen") == [["443", "ssl", "http2", "default_server"]]
    assert tls.all("http2") == []


def test_http2_form_per_release() -> None:
    by_release = DEFAULTS["nginx_http2_directive_by_release"]
    assert by_release["bookworm"] is False
    assert by_release["trixie"] is True


def test_tls_redirect_keeps_only_status_on_http() -> None:
    http = parse(render(nginx_tls_enabled=True, nginx_tls_redirect_http=True)).one("http")
    plain, tls = http.all("server")
    locations = {tuple(d.args): d for d in plain.all("location")}
    assert locations[("/",)].one("return").args == ["301", "https://$host$request_uri"]
    assert ("/api/",) not in locations
    assert ("=", "/nginx_status") in locations
    api_location(tls)


def test_rate_limiting_is_off_by_default_and_applies_to_the_api() -> None:
    assert parse(render()).one("http").all("limit_req_zone") == []
    http = parse(
        render(
            nginx_rate_limit_enabled=True, nginx_rate_limit_rate="50r/s", nginx_rate_limit_burst=10
        )
    ).one("http")
    assert http.one("limit_req_zone").args == [
        "$binary_remote_addr",
        "zone=clusterkit_api:10m",
        "rate=50r/s",
    ]
    assert http.one("limit_req_status").args == ["429"]
    location = api_location(http.one("server"))
    assert location.one("limit_req").args == ["zone=clusterkit_api", "burst=10", "nodelay"]


def test_listen_addresses() -> None:
    server = (
        parse(render(nginx_listen_addresses=["10.77.0.10", "127.0.0.1"])).one("http").one("server")
    )
    assert server.values("listen") == [
        ["10.77.0.10:80", "default_server"],
        ["127.0.0.1:80", "default_server"],
    ]


@pytest.mark.parametrize(
    ("variable", "path"),
    [
        ("nginx_extra_http_config", ["http"]),
        ("nginx_extra_server_config", ["http", "server"]),
    ],
)
def test_escape_hatches_land_in_their_block(variable: str, path: list[str]) -> None:
    node = parse(render(**{variable: "bogus_directive on;\nanother one;"}))
    for name in path:
        node = node.one(name)
    assert node.values("bogus_directive") == [["on"]]
    assert node.values("another") == [["one"]]


def test_extra_api_location_config() -> None:
    location = api_location(
        parse(render(nginx_extra_api_location_config="proxy_buffering off;"))
        .one("http")
        .one("server")
    )
    assert location.one("proxy_buffering").args == ["off"]


def test_every_default_is_declared_in_the_argument_spec() -> None:
    assert sorted(DEFAULTS) == sorted(SPECS["argument_specs"]["main"]["options"])


def test_status_page_is_html() -> None:
    page = render("index.html.j2")
    assert page.startswith("<!--\n")
    assert "<!DOCTYPE html>" in page
    assert "lb1" in page

    class Checker(html.parser.HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.stack: list[str] = []

        def handle_starttag(self, tag, attrs):
            if tag not in {"meta", "br"}:
                self.stack.append(tag)

        def handle_endtag(self, tag):
            assert self.stack[-1:] == [tag], f"</{tag}> closes {self.stack[-1:]}"
            self.stack.pop()

    checker = Checker()
    checker.feed(page)
    assert checker.stack == []


@pytest.mark.skipif(shutil.which("nginx") is None, reason="no nginx binary on the controller")
def test_nginx_accepts_the_rendered_file(tmp_path: Path) -> None:
    cfg = tmp_path / "nginx.conf"
    cfg.write_text(render())
    result = subprocess.run(["nginx", "-t", "-c", str(cfg)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
