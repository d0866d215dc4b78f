"""Small read-only probe of a mongod for the clusterkit mongodb role (needs pymongo).

    mongodb-probe.py state   [--host H] [--port P]
        Prints one JSON object from `hello` (no authentication needed):
        {"address", "state": "PRIMARY|SECONDARY|UNINITIATED|OTHER|DOWN", "setName", "me",
         "primary", "members", "error"}. Exit status 0 whatever the state.
    mongodb-probe.py states  HOST:PORT...
        The same for several members at once (asked in parallel): a JSON list, in order.
    mongodb-probe.py auth    --user U --db D [--host H] [--port P]      (password on stdin)
        Exit 0 when the credentials authenticate, 3 when the server refuses them,
        1 on any other error.
    mongodb-probe.py members --user U --db D [--host H] [--port P]      (password on stdin)
        Prints the JSON list of the `host` of every member in the replica set
        configuration (replSetGetConfig; hidden members and arbiters included).
    mongodb-probe.py status  --user U --db D [--host H] [--port P]      (password on stdin)
        Prints the JSON list of every member as replSetGetStatus sees it (name, stateStr,
        health, lastHeartbeatMessage, infoMessage, syncSourceHost): for diagnostics.

Passwords are read from stdin so that they never appear on a command line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor

from pymongo import MongoClient
from pymongo.errors import OperationFailure, PyMongoError

AUTH_FAILED = 3


def client(args, user=None, password=None, db=None, host=None) -> MongoClient:
    options = {
        "host": host or args.host,
        "port": args.port,
        "directConnection": True,
        "serverSelectionTimeoutMS": int(args.timeout * 1000),
        "connectTimeoutMS": int(args.timeout * 1000),
    }
    if user is not None:
        options.update(username=user, password=password, authSource=db)
    return MongoClient(**options)


def hello_state(args, host: str | None = None) -> dict:
    """The member's state as seen by `hello` (host "h:p" or --host/--port)."""
    address = host or f"{args.host}:{args.port}"
    result = {
        "address": address,
        "state": "DOWN",
        "setName": None,
        "me": None,
        "primary": None,
        "members": [],
        "error": None,
    }
    try:
        with client(args, host=host) as c:
            hello = c.admin.command("hello")
    except PyMongoError as exc:
        result["error"] = str(exc).splitlines()[0][:300]
        return result
    result["setName"] = hello.get("setName")
    result["me"] = hello.get("me")
    result["primary"] = hello.get("primary")
    result["members"] = (
        hello.get("hosts", []) + hello.get("passives", []) + hello.get("arbiters", [])
    )
    if hello.get("isWritablePrimary") and hello.get("setName"):
        result["state"] = "PRIMARY"
    elif hello.get("secondary"):
        result["state"] = "SECONDARY"
    elif hello.get("isreplicaset") and not hello.get("setName"):
        result["state"] = "UNINITIATED"
    else:
        result["state"] = "OTHER"
    return result


def state(args) -> int:
    print(json.dumps(hello_state(args)))
    return 0


def states(args) -> int:
    with ThreadPoolExecutor(max_workers=max(1, len(args.addresses))) as pool:
        print(json.dumps(list(pool.map(lambda a: hello_state(args, a), args.addresses))))
    return 0


def auth(args) -> int:
    password = sys.stdin.readline().rstrip("\n")
    try:
        with client(args, args.user, password, args.db) as c:
            c[args.db].command("connectionStatus")
    except OperationFailure as exc:
        if exc.code == 18:  # AuthenticationFailed
            return AUTH_FAILED
        print(str(exc).splitlines()[0], file=sys.stderr)
        return 1
    except PyMongoError as exc:
        print(str(exc).splitlines()[0], file=sys.stderr)
        return 1
    return 0


def admin_command(args, name: str) -> dict | None:
    """Run an admin command with the credentials on stdin; None (reason on stderr) on error."""
    password = sys.stdin.readline().rstrip("\n")
    try:
        with client(args, args.user, password, args.db) as c:
            return c.admin.command(name)
    except PyMongoError as exc:
        print(str(exc).splitlines()[0], file=sys.stderr)
        return None


def members(args) -> int:
    found = admin_command(args, "replSetGetConfig")
    if found is None:
        return 1
    print(json.dumps([m["host"] for m in found["config"]["members"]]))
    return 0


STATUS_FIELDS = (
    "name",
    "stateStr",
    "health",
    "uptime",
    "lastHeartbeatMessage",
    "infoMessage",
    "syncSourceHost",
)


def status(args) -> int:
    found = admin_command(args, "replSetGetStatus")
    if found is None:
        return 1
    print(json.dumps([{k: m.get(k) for k in STATUS_FIELDS} for m in found["members"]]))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["state", "states", "auth", "members", "status"])
    parser.add_argument("addresses", nargs="*", metavar="HOST:PORT", help="members for `states`")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=27017)
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the server")
    parser.add_argument("--user")
    parser.add_argument("--db", default="admin")
    args = parser.parse_args()
    if args.command in ("auth", "members", "status") and not args.user:
        parser.error(f"{args.command} needs --user")
    if args.command == "states" and not args.addresses:
        parser.error("states needs at least one HOST:PORT")
    commands = {
        "state": state,
        "states": states,
        "auth": auth,
        "members": members,
        "status": status,
    }
    return commands[args.command](args)


if __name__ == "__main__":
    code = main()
    # os._exit, not sys.exit: at a normal exit the interpreter joins pymongo's monitor threads,
    # which takes about 0.5 s per call (0.7 s -> 0.15 s for one probe). Nothing is left to
    # flush but the standard streams.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)
