#!/usr/bin/env python3
"""Collect the stage records of scripts/run-tests.sh into logs/timings.json and print a table.

    python3 scripts/timings.py RECORDS_FILE OUT_JSON STARTED_EPOCH

RECORDS_FILE has one tab-separated line per stage: name, start offset (s from the start of
the run), seconds, status (passed, failed, skipped), log file. Stages that ran side by side
overlap in their offsets; the total is the wall time of the whole run, not the sum.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import UTC, datetime


def main() -> int:
    records, out, started = sys.argv[1], sys.argv[2], float(sys.argv[3])
    stages = []
    with open(records, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            name, offset, seconds, status, log = line.rstrip("\n").split("\t")
            stages.append(
                {
                    "name": name,
                    "seconds": round(float(seconds), 1),
                    "status": status,
                    "start_offset_s": round(float(offset), 1),
                    "log": log,
                }
            )
    stages.sort(key=lambda s: s["start_offset_s"])
    total = time.time() - started
    report = {
        "started_at": datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds"),
        "total_s": round(total, 1),
        "machine": {"cpus": os.cpu_count()},
        "stages": stages,
    }
    with open(out, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    print(f"{'stage':<28} {'start':>7} {'seconds':>8}  status")
    for s in stages:
        print(f"{s['name']:<28} {s['start_offset_s']:>7.0f} {s['seconds']:>8.1f}  {s['status']}")
    print(f"{'total (wall)':<28} {'':>7} {total:>8.1f}  ({total / 60:.1f} min; {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
