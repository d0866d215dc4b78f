"""The haproxy role (roles/haproxy): HAProxy in front of the app workers, its config checked
before it replaces the one in use and applied with a seamless reload (the server state saved
first), only when it changed."""

from __future__ import annotations

import subprocess

from pyinfra.api import deploy
from pyinfra.api.operation import OperationMeta

from pyinfra_deploy import helpers
from pyinfra_deploy.helpers import Vars, quote
from pyinfra_deploy.roles.firewall import role_rules
from pyinfra_deploy.templating import render


def _configure(v: Vars) -> OperationMeta:
    """configure.yml: the installed version decides idle-close-on-response; the stats password
    hashed on the controller."""
    stats = bool(v.render("{{ haproxy_stats_enabled | bool }}"))
    password_hash = ""
    if stats:
        password_hash = subprocess.run(
            ["openssl", "passwd", "-6", "-salt", v["haproxy_stats_password_salt"], "-stdin"],
            input=v["haproxy_stats_password"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    setting = v["haproxy_idle_close_on_response"]

    def content() -> str:
        idle = (
            bool(v.render("{{ haproxy_idle_close_on_response | bool }}"))
            if setting != "auto"
            else False
        )
        if setting == "auto":
            _, out = helpers.run_now(
                "haproxy -v | sed -n 's/^HAProxy version \\([0-9]*\\)[.]\\([0-9]*\\).*/\\1 \\2/p'"
            )
            major, minor = (int(x) for x in (out[0] if out else "0 0").split())
            idle = (major, minor) >= (2, 6)
        return render(
            "haproxy/haproxy.cfg.j2",
            v,
            haproxy_idle_close=idle,
            haproxy_stats_password_hash=password_hash,
        )

    return helpers.installed_file(
        name="Write /etc/haproxy/haproxy.cfg",
        dest="/etc/haproxy/haproxy.cfg",
        content=content,
        mode="0640",
        group="haproxy",
        validate="haproxy -c -f %s -q",
    )


def _service(v: Vars, conf: OperationMeta) -> None:
    start = helpers.enable_and_start("haproxy.service")
    sock = quote(v["haproxy_runtime_socket"])
    state_file = v["haproxy_server_state_file"]
    info = f"echo 'show info' | socat -t 2 stdio UNIX-CONNECT:{sock}"
    save = (
        (
            f"echo 'show servers state' | socat -t 2 stdio UNIX-CONNECT:{sock} "
            f"> {quote(state_file)}.new "
            f"&& mv {quote(state_file)}.new {quote(state_file)}; "
        )
        if state_file
        else ""
    )
    timeout = int(v["haproxy_start_timeout"])
    pid = f"$({info} | sed -n 's/^Pid: //p')"
    helpers.ensure(
        name="Reload HAProxy for its new config (seamless)",
        check=lambda: helpers.has_changed(conf) and not helpers.has_changed(start),
        apply=lambda: iter(
            [
                f"set -e; umask 027; before={pid}; {save}systemctl reload haproxy.service; "
                + helpers.retry_until(
                    f'[ -n "{pid}" ] && [ "{pid}" != "$before" ]', timeout, "haproxy reload"
                )
            ]
        ),
    )
    answering = f"{info} | grep -q '^Pid: '"
    helpers.ensure(
        name="Wait until HAProxy answers on the runtime API",
        check=lambda: not helpers.run_now(answering)[0],
        apply=lambda: iter([helpers.retry_until(answering, timeout, "haproxy")]),
    )


@deploy("haproxy")
def haproxy(v: Vars) -> None:
    """The haproxy role's main entry, on the hosts of group lb."""
    helpers.apt_install(list(v["haproxy_packages"]), "Install HAProxy")  # install.yml
    conf = _configure(v)
    role_rules(v, "haproxy", list(v["haproxy_firewall_rules"]))  # firewall.yml
    _service(v, conf)
