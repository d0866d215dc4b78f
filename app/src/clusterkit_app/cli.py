"""Command line: ``clusterkit-app [run|workers|check-config]``; configured by the environment."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import re
import sys
from collections.abc import Callable

from . import __version__
from .config import ConfigError, load_config, load_etcd_only
from .etcd import EtcdClient, EtcdError
from .runtime import EXIT_CONFIG, EXIT_ERROR, run


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop (a dependency: the same requests cost the worker less CPU), or
    asyncio's own where uvloop is not installed."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _config_error(exc: ConfigError) -> int:
    print(f"clusterkit-app: configuration error: {exc.name} {exc.problem}", file=sys.stderr)
    return EXIT_CONFIG


async def _list_workers(node_id: str | None) -> int:
    endpoints, user, password, prefix = load_etcd_only(os.environ)
    client = EtcdClient(endpoints, user, password)
    try:
        base = f"{prefix}/nodes/{node_id}/" if node_id else f"{prefix}/nodes/"
        for kv in await client.get_prefix(base):
            if "/workers/" in kv.key or kv.key.endswith("/master"):
                try:
                    value = json.loads(kv.value)
                except ValueError:
                    value = kv.value
                print(json.dumps({"key": kv.key, "value": value}))
    except EtcdError as exc:
        print(f"clusterkit-app: etcd: {exc}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        await client.aclose()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="clusterkit-app",
        description="clusterkit reference app. Configured by environment variables (README.md).",
    )
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("run", help="run as MODE=standalone|master|worker (default command)")
    sub.add_parser("check-config", help="validate the environment and print the configuration")
    workers = sub.add_parser(
        "workers", help="list the live workers (and master) registered in etcd, as JSON lines"
    )
    workers.add_argument("--node-id", default=os.environ.get("NODE_ID") or None)
    args = parser.parse_args(argv)

    try:
        if args.command == "workers":
            return asyncio.run(_list_workers(args.node_id))
        config = load_config(os.environ)
    except ConfigError as exc:
        return _config_error(exc)

    if args.command == "check-config":
        shown = dataclasses.asdict(config)
        for key in ("grpc_token", "redis_password", "etcd_password"):
            if shown[key]:
                shown[key] = "***"
        shown["mongodb_uri"] = re.sub(r"//[^@/]*@", "//***@", config.mongodb_uri)
        print(json.dumps(shown, indent=2))
        return 0

    logging.basicConfig(
        level=config.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(
        max(logging.WARNING, logging.getLevelName(config.log_level))
    )
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        return runner.run(run(config))


if __name__ == "__main__":
    raise SystemExit(main())
