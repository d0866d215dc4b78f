#!/usr/bin/python3
"""A stand-in for one app worker in the front-end scenarios (standard library only).

Speaks the worker contract the load balancers rely on: GET /healthz (200, or 503 while the
file /run/stub-backend/<port>.down exists), POST /api/requests (holds one of --concurrency
slots for --service-ms, answers JSON with header X-Worker-Id), and any other /api/ path
echoes the request headers. GET /stub/stats reports what the stub saw: requests, the most
requests it served at once, how many requests arrived while another was in service
(overlapped), and how many TCP connections were opened to it.
"""

import argparse
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STATE_DIR = "/run/stub-backend"


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests = 0
        self.in_service = 0
        self.max_in_service = 0
        self.overlapped = 0
        self.connections = 0


def make_handler(worker_id, port, service_s, stats):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Answers go out at once (no Nagle delay waiting for the peer's delayed ACK).
        disable_nagle_algorithm = True

        def setup(self):
            super().setup()
            with stats.lock:
                stats.connections += 1

        def log_message(self, *args):
            pass

        def _send(self, status, body, extra=None):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("X-Worker-Id", worker_id)
            for key, value in (extra or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def _drain_body(self):
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def do_GET(self):
            if self.path == "/healthz":
                if os.path.exists(f"{STATE_DIR}/{port}.down"):
                    self._send(503, {"status": "draining"})
                else:
                    self._send(200, {"status": "ok"})
            elif self.path == "/stub/stats":
                with stats.lock:
                    self._send(
                        200,
                        {
                            "requests": stats.requests,
                            "max_in_service": stats.max_in_service,
                            "overlapped": stats.overlapped,
                            "connections": stats.connections,
                        },
                    )
            elif self.path.startswith("/api/"):
                self._send(
                    200, {"worker_id": worker_id, "path": self.path, "headers": dict(self.headers)}
                )
            else:
                self._send(404, {"error": "not found"})

        def do_POST(self):
            self._drain_body()
            if not self.path.startswith("/api/"):
                self._send(404, {"error": "not found"})
                return
            with stats.lock:
                stats.requests += 1
                stats.in_service += 1
                stats.max_in_service = max(stats.max_in_service, stats.in_service)
                if stats.in_service > 1:
                    stats.overlapped += 1
            try:
                time.sleep(service_s)
            finally:
                with stats.lock:
                    stats.in_service -= 1
            self._send(
                200, {"worker_id": worker_id, "path": self.path, "headers": dict(self.headers)}
            )

    return Handler


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bind", default="0.0.0.0")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--id", required=True)
    parser.add_argument("--service-ms", type=float, default=66.0)
    args = parser.parse_args()
    os.makedirs(STATE_DIR, exist_ok=True)
    stats = Stats()
    server = ThreadingHTTPServer(
        (args.bind, args.port), make_handler(args.id, args.port, args.service_ms / 1000, stats)
    )
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
