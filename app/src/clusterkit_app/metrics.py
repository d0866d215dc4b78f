"""Prometheus metrics (default registry; exposed at /metrics by workers and masters)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

HTTP_REQUESTS = Counter(
    "clusterkit_http_requests_total", "HTTP requests answered", ["method", "route", "status"]
)
REQUESTS_IN_SERVICE = Gauge("clusterkit_requests_in_service", "Requests holding a capacity slot")
REQUESTS_WAITING = Gauge("clusterkit_requests_waiting", "Requests waiting for a capacity slot")
SERVICE_SECONDS = Histogram(
    "clusterkit_request_service_seconds",
    "Time a request held its capacity slot",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.066, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
REQUEST_SECONDS = Histogram(
    "clusterkit_request_seconds",
    "Time from arrival to response for POST /api/requests (waiting included)",
    buckets=(0.01, 0.05, 0.07, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
JOBS_SUBMITTED = Counter("clusterkit_jobs_submitted_total", "Jobs accepted by POST /api/jobs")
JOBS_APPLIED = Counter(
    "clusterkit_jobs_applied_total", "Jobs processed by this worker", ["result"]
)  # result: applied | duplicate | error
JOBS_IN_FLIGHT = Gauge("clusterkit_worker_jobs_in_flight", "Jobs being applied by this worker")
MASTER_CONNECTED = Gauge(
    "clusterkit_worker_master_connected", "1 while the job stream from the master is up"
)
DRAINING = Gauge("clusterkit_draining", "1 while the process drains after SIGTERM")

MASTER_LOCK_HELD = Gauge("clusterkit_master_lock_held", "1 while this master holds the lock")
MASTER_WORKERS = Gauge("clusterkit_master_workers_connected", "Workers subscribed to the stream")
MASTER_DISPATCHED = Counter("clusterkit_master_jobs_dispatched_total", "Jobs sent to workers")
MASTER_ACKED = Counter("clusterkit_master_jobs_acked_total", "Acks received", ["result"])
MASTER_REQUEUED = Counter(
    "clusterkit_master_jobs_requeued_total", "Jobs put back in the queue", ["reason"]
)
MASTER_IN_FLIGHT = Gauge("clusterkit_master_jobs_in_flight", "Jobs dispatched and not yet acked")
MASTER_QUEUE_DEPTH = Gauge("clusterkit_master_queue_depth", "Jobs waiting in the Redis queue")

BROADCAST_SENT = Counter(
    "clusterkit_broadcast_sent_total", "Broadcast messages published by this process", ["kind"]
)
BROADCAST_RECEIVED = Counter(
    "clusterkit_broadcast_received_total",
    "Broadcast messages accepted (verified, fresh, first seen) by this process",
    ["kind"],
)
BROADCAST_DROPPED = Counter(
    "clusterkit_broadcast_dropped_total",
    "Broadcast messages dropped unread (never acted on)",
    ["reason"],
)  # reason: see broadcast.REASONS
BROADCAST_HANDLER_ERRORS = Counter(
    "clusterkit_broadcast_handler_errors_total", "Broadcast handlers that raised", ["kind"]
)
BROADCAST_SUBSCRIBED = Gauge(
    "clusterkit_broadcast_subscribed", "1 while subscribed to the broadcast channel"
)
BROADCAST_SUBSCRIPTIONS = Counter(
    "clusterkit_broadcast_subscriptions_total",
    "Subscriptions confirmed by Redis (the first one, then one per reconnect)",
)
