#!/usr/bin/python3
"""etcd client authentication for the pyinfra deploy, as the etcd role sets it up.

    etcd-auth.py check   exit 0 when users, roles, permissions and auth are as wanted, else 10
    etcd-auth.py apply   change what differs (each step reads the cluster first)

Environment: ETCD_ROOT_PASSWORD, ETCD_APP_PASSWORD, ETCD_APP_USER, ETCD_APP_PREFIX,
ETCD_ENDPOINT (default http://127.0.0.1:2379). Passwords reach etcdctl through its
environment or standard input only.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

ROOT_PW = os.environ["ETCD_ROOT_PASSWORD"]
APP_PW = os.environ["ETCD_APP_PASSWORD"]
APP = os.environ.get("ETCD_APP_USER", "clusterkit")
PREFIX = os.environ.get("ETCD_APP_PREFIX", "/clusterkit/")
BASE = {
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    "ETCDCTL_API": "3",
    "ETCDCTL_ENDPOINTS": os.environ.get("ETCD_ENDPOINT", "http://127.0.0.1:2379"),
    "ETCDCTL_DIAL_TIMEOUT": "3s",
    "ETCDCTL_COMMAND_TIMEOUT": "10s",
}


def ctl(*args: str, user: str | None = "root", stdin: str | None = None):
    env = dict(BASE)
    if user:
        env.update(ETCDCTL_USER=user, ETCDCTL_PASSWORD=ROOT_PW if user == "root" else APP_PW)
    return subprocess.run(["etcdctl", *args], env=env, input=stdin, capture_output=True, text=True)


def state() -> dict:
    anon = ctl("user", "list", user=None)
    if anon.returncode != 0 and "user name is empty" not in anon.stderr:
        sys.exit(f"etcd: {anon.stderr.strip()}")
    auth_on = anon.returncode != 0
    users = ctl("user", "list")
    if users.returncode != 0:
        sys.exit(f"etcd refused user root with etcd_root_password: {users.stderr.strip()}")
    user_names = users.stdout.split()
    role_names = ctl("role", "list").stdout.split()
    roles_of = {}
    for name in ("root", APP):
        if name in user_names:
            got = json.loads(ctl("user", "get", name, "--write-out=json").stdout or "{}")
            roles_of[name] = got.get("roles") or []
    perm_ok = False
    if APP in role_names:
        got = json.loads(ctl("role", "get", APP, "--write-out=json").stdout or "{}")
        key = base64.b64encode(PREFIX.encode()).decode()
        perm_ok = any(
            p.get("key") == key and "range_end" in p and p.get("permType") == 2
            for p in got.get("perm") or []
        )
    app_login_ok = False
    if auth_on and APP in user_names:
        login = ctl("get", PREFIX, "--keys-only", "--limit=1", user=APP)
        app_login_ok = "authentication failed" not in login.stderr
    return {
        "auth_on": auth_on,
        "users": user_names,
        "roles": role_names,
        "roles_of": roles_of,
        "perm_ok": perm_ok,
        "app_login_ok": app_login_ok,
    }


def steps(s: dict) -> list[tuple[list[str], str | None]]:
    twice = lambda pw: f"{pw}\n{pw}"  # noqa: E731
    out: list[tuple[list[str], str | None]] = []
    if "root" not in s["roles"]:
        out.append((["role", "add", "root"], None))
    if "root" not in s["users"]:
        out.append((["user", "add", "root", "--interactive=true"], twice(ROOT_PW)))
    elif not s["auth_on"]:
        out.append((["user", "passwd", "root", "--interactive=true"], twice(ROOT_PW)))
    if "root" not in s["roles_of"].get("root", []):
        out.append((["user", "grant-role", "root", "root"], None))
    if APP not in s["roles"]:
        out.append((["role", "add", APP], None))
    if not s["perm_ok"]:
        out.append((["role", "grant-permission", APP, "readwrite", PREFIX, "--prefix=true"], None))
    if APP not in s["users"]:
        out.append((["user", "add", APP, "--interactive=true"], twice(APP_PW)))
    elif not s["app_login_ok"]:
        out.append((["user", "passwd", APP, "--interactive=true"], twice(APP_PW)))
    if APP not in s["roles_of"].get(APP, []):
        out.append((["user", "grant-role", APP, APP], None))
    if not s["auth_on"]:
        out.append((["auth", "enable"], None))
    return out


def main() -> int:
    todo = steps(state())
    if sys.argv[1:] == ["check"]:
        for args, _ in todo:
            print("due: etcdctl " + " ".join(args[:3]))
        return 10 if todo else 0
    for args, stdin in todo:
        run = ctl(*args, stdin=stdin)
        if run.returncode != 0 and "already exists" not in run.stderr:
            sys.exit(f"etcdctl {' '.join(args[:3])}: {run.stderr.strip()}")
        print(f"etcdctl {' '.join(args[:3])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
