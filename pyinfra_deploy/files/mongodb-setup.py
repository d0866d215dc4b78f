"""Replica set and users for the pyinfra deploy (runs on a member with the role's pymongo venv).

    mongodb-setup.py initiate NAME HOST:PORT...   replSetInitiate over 127.0.0.1 (all members)
    mongodb-setup.py wait HOST:PORT... [--timeout S]
        until one member is PRIMARY and every one PRIMARY or SECONDARY
    mongodb-setup.py user --db D --name N --role ROLE [--host H:P] [--admin USER]
        creates or updates user N (password $MONGODB_PASSWORD, the one role ROLE on D); with
        --admin, logs in as USER on admin ($MONGODB_ADMIN_PASSWORD), else uses the localhost
        exception (127.0.0.1, no user yet). Prints "changed" when it wrote anything.

Passwords come from the environment only, never from the command line.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from pymongo import MongoClient
from pymongo.errors import OperationFailure, PyMongoError


def connect(address: str, user: str | None = None, password: str | None = None) -> MongoClient:
    host, _, port = address.rpartition(":")
    options: dict = {"directConnection": True, "serverSelectionTimeoutMS": 5000}
    if user:
        options.update(username=user, password=password, authSource="admin")
    return MongoClient(host=host, port=int(port), **options)


def hello(address: str) -> dict:
    try:
        with connect(address) as c:
            return c.admin.command("hello")
    except PyMongoError:
        return {}


def initiate(args: argparse.Namespace) -> int:
    members = [{"_id": i, "host": a} for i, a in enumerate(args.members)]
    with connect("127.0.0.1:" + args.members[0].rpartition(":")[2]) as c:
        c.admin.command("replSetInitiate", {"_id": args.name, "members": members})
    return wait(args)


def wait(args: argparse.Namespace) -> int:
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        states = [hello(a) for a in args.members]
        healthy = [s.get("isWritablePrimary") or s.get("secondary") for s in states]
        if any(s.get("isWritablePrimary") for s in states) and all(healthy):
            return 0
        time.sleep(2)
    print(f"replica set not healthy within {args.timeout} s: {args.members}", file=sys.stderr)
    return 1


def user(args: argparse.Namespace) -> int:
    password = os.environ["MONGODB_PASSWORD"]
    address = args.host
    admin_password = os.environ.get("MONGODB_ADMIN_PASSWORD") if args.admin else None
    roles = [{"role": args.role, "db": args.db}]
    with connect(address, args.admin, admin_password) as c:
        db = c[args.db]
        if not args.admin:
            # The localhost exception allows exactly this: creating the first user.
            db.command("createUser", args.name, pwd=password, roles=roles)
            print("changed")
            return 0
        found = db.command("usersInfo", args.name)["users"]
        if not found:
            db.command("createUser", args.name, pwd=password, roles=roles)
            print("changed")
            return 0
        current = [{"role": r["role"], "db": r["db"]} for r in found[0]["roles"]]
        try:
            with connect(address, args.name, password) as probe:
                probe[args.db].command("connectionStatus")
                probe.admin.command("ping")
            authenticates = True
        except OperationFailure:
            authenticates = False
        # authSource admin above is wrong for users of other databases: check there too.
        if not authenticates and args.db != "admin":
            host, _, port = address.rpartition(":")
            try:
                with MongoClient(
                    host=host,
                    port=int(port),
                    directConnection=True,
                    username=args.name,
                    password=password,
                    authSource=args.db,
                    serverSelectionTimeoutMS=5000,
                ) as probe:
                    probe[args.db].command("connectionStatus")
                authenticates = True
            except OperationFailure:
                authenticates = False
        if current != roles or not authenticates:
            db.command("updateUser", args.name, pwd=password, roles=roles)
            print("changed")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    init = sub.add_parser("initiate")
    init.add_argument("name")
    init.add_argument("members", nargs="+")
    init.add_argument("--timeout", type=float, default=180)
    waiting = sub.add_parser("wait")
    waiting.add_argument("members", nargs="+")
    waiting.add_argument("--timeout", type=float, default=180)
    users = sub.add_parser("user")
    users.add_argument("--db", required=True)
    users.add_argument("--name", required=True)
    users.add_argument("--role", required=True)
    users.add_argument("--host", default="127.0.0.1:27017")
    users.add_argument("--admin")
    args = parser.parse_args()
    return {"initiate": initiate, "wait": wait, "user": user}[args.command](args)


if __name__ == "__main__":
    code = main()
    # os._exit, not sys.exit: at a normal exit the interpreter joins pymongo's monitor threads,
    # which takes about 0.5 s per call (0.7 s -> 0.15 s for one probe). Nothing is left to
    # flush but the standard streams.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)
