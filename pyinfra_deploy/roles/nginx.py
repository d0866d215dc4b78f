"""The nginx role (roles/nginx): the front end with its status page and, when enabled, TLS from
a certificate copied from the controller or self-signed on the host; the config checked before
it replaces the one in use and applied with a graceful reload, only when it changed."""

from __future__ import annotations

from pathlib import Path

from pyinfra.api import deploy
from pyinfra.api.operation import OperationMeta

from pyinfra_deploy import helpers
from pyinfra_deploy.helpers import Vars, quote
from pyinfra_deploy.roles.firewall import role_rules


def _tls(v: Vars) -> list[OperationMeta]:
    """tls.yml: the certificate and its key (the operations whose change reloads nginx)."""
    tls_ops: list[OperationMeta] = []
    cert, key = v["nginx_tls_certificate"], v["nginx_tls_certificate_key"]
    for d in sorted({str(Path(cert).parent), str(Path(key).parent)}):
        helpers.directory(d)
    if v["nginx_tls_certificate_src"]:
        tls_ops.append(
            helpers.installed_file(
                name="Copy the certificate", dest=cert, src=v["nginx_tls_certificate_src"]
            )
        )
        tls_ops.append(
            helpers.installed_file(
                name="Copy the key",
                dest=key,
                src=v["nginx_tls_certificate_key_src"],
                mode="0600",
            )
        )
    elif v.render("{{ nginx_tls_self_signed | bool }}"):
        names = ",".join(v["nginx_tls_self_signed_names"])
        tls_ops.append(
            helpers.ensure(
                name="Make a self-signed certificate",
                check=lambda: (
                    not helpers.run_now(f"test -s {quote(cert)} && test -s {quote(key)}")[0]
                ),
                apply=lambda: iter(
                    [
                        "umask 077; openssl req -x509 -newkey ec "
                        "-pkeyopt ec_paramgen_curve:prime256v1 -nodes "
                        f"-keyout {quote(key)} -out {quote(cert)} "
                        f"-days {int(v['nginx_tls_self_signed_days'])} "
                        f"-subj {quote('/CN=' + v.name)} "
                        f"-addext {quote('subjectAltName=' + names)} 2>/dev/null "
                        f"&& chmod 0644 {quote(cert)}"
                    ]
                ),
            )
        )
    return tls_ops


def _configure(v: Vars) -> OperationMeta:
    default_site = "/etc/nginx/sites-enabled/default"
    helpers.ensure(
        name="Remove the distribution's default site",
        check=lambda: helpers.run_now(f"test -e {default_site} || test -L {default_site}")[0],
        apply=lambda: iter([f"rm -f {default_site}"]),
    )
    root = v["nginx_root"]
    helpers.directory(root)
    helpers.write_template(v, "nginx/index.html.j2", f"{root}/index.html")
    return helpers.write_template(
        v, "nginx/nginx.conf.j2", "/etc/nginx/nginx.conf", validate="nginx -t -q -c %s"
    )


def _service(v: Vars, reload_for: list[OperationMeta]) -> None:
    start = helpers.enable_and_start("nginx.service")
    helpers.ensure(
        name="Reload nginx for its new config (graceful)",
        check=lambda: helpers.any_changed(*reload_for)() and not helpers.has_changed(start),
        apply=lambda: iter(["systemctl reload nginx.service"]),
    )
    url = f"http://{v['nginx_check_address']}:{int(v['nginx_http_port'])}/"
    helpers.wait_for_page("Wait until nginx serves the status page", url, 30, "nginx")


@deploy("nginx")
def nginx(v: Vars) -> None:
    """The nginx role's main entry, on the hosts of group lb."""
    helpers.apt_install(list(v["nginx_packages"]), "Install nginx")  # install.yml
    tls_ops = _tls(v) if v.render("{{ nginx_tls_enabled | bool }}") else []
    conf = _configure(v)
    role_rules(v, "nginx", list(v["nginx_firewall_rules"]))  # firewall.yml
    _service(v, [conf, *tls_ops])
