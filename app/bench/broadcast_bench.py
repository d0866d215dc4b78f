"""Broadcast channel throughput on this machine (not a test: it asserts nothing).

N subscriber processes (each one BroadcastChannel on its own Redis client, as each worker is one
process) and one publisher process against a real redis-server (clusterkit_app.devservers). The
publisher sends M signed messages with C publishes in flight; a run ends when every subscriber
has accepted all M. Reports messages published per second and messages delivered per second
(N x M over the run's time), medians of --reps runs for each N.

Usage: python bench/broadcast_bench.py [--out results/broadcast-bench.json] [--subscribers 1,4,16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import report_header  # bench/bench.py, beside this script
from clusterkit_app.broadcast import Message
from clusterkit_app.broadcast_channel import BroadcastChannel
from clusterkit_app.devservers import RedisServer
from clusterkit_app.store import make_redis

TOKEN = "bench-token"
KIND = "bench"


def subscriber(port: int, password: str | None, node: str, name: str, count: int, out: Any) -> None:
    async def main() -> None:
        client = make_redis("127.0.0.1", port, password, 0)
        chan = BroadcastChannel(client, TOKEN, node, name, "worker")
        done = asyncio.Event()
        got = 0

        async def on(msg: Message) -> None:
            nonlocal got
            got += 1
            if got == count:
                done.set()

        chan.on(KIND, on)
        task = asyncio.create_task(chan.run())
        await chan.subscribed.wait()
        out.send(("ready", name))
        try:
            await asyncio.wait_for(done.wait(), 300)
            out.send(("done", time.monotonic(), got, dict(chan.dropped)))
        except TimeoutError:
            out.send(("timeout", time.monotonic(), got, dict(chan.dropped)))
        task.cancel()
        await client.aclose()

    asyncio.run(main())


async def publish_all(
    port: int, password: str | None, node: str, count: int, inflight: int
) -> float:
    client = make_redis("127.0.0.1", port, password, 0)
    chan = BroadcastChannel(client, TOKEN, node, "publisher", "worker")
    queue = iter(range(count))

    async def sender() -> None:
        for i in queue:
            await chan.publish(KIND, {"i": i})

    started = time.monotonic()
    await asyncio.gather(*(sender() for _ in range(inflight)))
    elapsed = time.monotonic() - started
    await client.aclose()
    return elapsed


def run_once(redis: RedisServer, n: int, count: int, inflight: int, rep: int) -> dict[str, Any]:
    node = f"bench-{n}-{rep}"
    ctx = mp.get_context("spawn")
    pipes, procs = [], []
    for i in range(n):
        parent, child = ctx.Pipe()
        proc = ctx.Process(
            target=subscriber, args=(redis.port, redis.password, node, f"s{i}", count, child)
        )
        proc.start()
        pipes.append(parent)
        procs.append(proc)
    try:
        for p in pipes:
            if not p.poll(60):
                raise TimeoutError("subscriber did not subscribe")
            p.recv()
        started = time.monotonic()
        publish_s = asyncio.run(publish_all(redis.port, redis.password, node, count, inflight))
        ends = []
        for p in pipes:
            if not p.poll(320):
                raise TimeoutError("subscriber did not report")
            status, at, got, dropped = p.recv()
            if status != "done" or dropped:
                raise RuntimeError(f"subscriber {status}: {got}/{count}, dropped {dropped}")
            ends.append(at)
        elapsed = max(ends) - started
    finally:
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
    return {
        "subscribers": n,
        "messages": count,
        "publishes_in_flight": inflight,
        "seconds": round(elapsed, 3),
        "published_per_s": round(count / publish_s, 1),
        "delivered_per_s": round(n * count / elapsed, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="results/broadcast-bench.json")
    parser.add_argument("--subscribers", default="1,4,16")
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--inflight", type=int, default=16)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="clusterkit-bcast-bench-"))
    redis = RedisServer(workdir)
    report: dict[str, Any] = {
        **report_header(),
        "setup": "1 publisher process, N subscriber processes, one local redis-server",
        "results": [],
    }
    try:
        for n in (int(x) for x in args.subscribers.split(",")):
            runs = []
            for rep in range(args.reps):
                runs.append(run_once(redis, n, args.messages, args.inflight, rep))
                print(f"N={n} rep {rep}: {runs[-1]}", flush=True)
            report["results"].append(
                {
                    "subscribers": n,
                    "runs": runs,
                    "median_published_per_s": statistics.median(r["published_per_s"] for r in runs),
                    "median_delivered_per_s": statistics.median(r["delivered_per_s"] for r in runs),
                }
            )
    finally:
        redis.stop()

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    for r in report["results"]:
        print(
            f"N={r['subscribers']:>2}: {r['median_published_per_s']:>8} published/s, "
            f"{r['median_delivered_per_s']:>8} delivered/s (medians)"
        )
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
