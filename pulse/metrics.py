"""Prometheus metrics shared by every stage, labelled by the stage's stable name, and /metrics + /healthz."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

# Seconds; from sub-millisecond produce calls to multi-second GPU batches.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

MESSAGES = Counter("pulse_messages_total", "Messages handled, by stage and outcome.", ["stage", "outcome"])
DEAD_LETTERS = Counter(
    "pulse_dead_letters_total", "Records sent to the dead-letter topic.", ["stage", "reason"]
)
LATE_RECORDS = Counter("pulse_late_records_total", "Records later than the allowed lateness.", ["stage"])
BATCH_SIZE = Histogram(
    "pulse_batch_size", "Records per batch.", ["stage"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
)
LATENCY = Histogram(
    "pulse_latency_seconds",
    "Latency of one step, by stage and step.",
    ["stage", "step"],
    buckets=LATENCY_BUCKETS,
)
QUEUE_DEPTH = Gauge(
    "pulse_queue_depth", "Items waiting in an internal or producer queue.", ["stage", "queue"]
)
CONSUMER_LAG = Gauge("pulse_consumer_lag", "High watermark minus position.", ["stage", "topic", "partition"])
WATERMARK_LAG = Gauge(
    "pulse_watermark_lag_seconds",
    "Wall clock minus the event-time watermark of the partitions owned.",
    ["stage"],
)


class _Handler(BaseHTTPRequestHandler):
    health: Callable[[], bool] = staticmethod(lambda: True)

    def do_GET(self) -> None:
        if self.path == "/metrics":
            body, ctype, status = generate_latest(), CONTENT_TYPE_LATEST, 200
        elif self.path == "/healthz":
            ok = self.health()
            body, ctype, status = (b"ok\n" if ok else b"unhealthy\n"), "text/plain", 200 if ok else 503
        else:
            body, ctype, status = b"not found\n", "text/plain", 404
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


def serve(host: str, port: int, health: Callable[[], bool] = lambda: True) -> ThreadingHTTPServer:
    """Serve /metrics and /healthz on a daemon thread; port 0 picks a free one (see server_address)."""
    handler = type("Handler", (_Handler,), {"health": staticmethod(health)})
    server = ThreadingHTTPServer((host, port), handler)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
