"""How long `alert_dispatch.dispatch` holds the caller, per receiver behaviour.

The caller (the trading loop) must never wait for a webhook: dispatch writes the alerts.log line
(fsync-ed) and puts the alert on the worker's queue. This measures that time for 200 distinct
alerts against local receivers on 127.0.0.1 that answer at once, answer 500, answer after 2 s,
or refuse the connection; and the time `close()` takes to flush what is left.

Run: .venv/bin/python bench/bench_alerts.py [--alerts N]
"""

from __future__ import annotations

import argparse
import http.server
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import alert_dispatch as ad


def _handler(status: int, delay_s: float) -> type[http.server.BaseHTTPRequestHandler]:
    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            time.sleep(delay_s)
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    return Receiver


@contextmanager
def receiver(status: int = 200, delay_s: float = 0.0) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(status, delay_s))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    finally:
        server.shutdown()


def measure(name: str, url: str, n: int) -> None:
    with tempfile.TemporaryDirectory() as home:
        webhook = ad.WebhookConfig(url, read_timeout_s=1.0, backoff_s=0.05)
        d = ad.AlertDispatcher(home, webhook=webhook, queue_size=n + 10)
        times = []
        for i in range(n):
            alert = ad.Alert(ad.Severity.HIGH, "bench", f"alert {i}", "bench message")
            started = time.perf_counter()
            d.dispatch(alert)
            times.append(time.perf_counter() - started)
        started = time.perf_counter()
        d.close(timeout_s=2.0)
        close_s = time.perf_counter() - started
    ms = sorted(t * 1000 for t in times)
    p99 = ms[min(len(ms) - 1, int(0.99 * len(ms)))]
    print(
        f"{name:<28} dispatch mean {statistics.mean(ms):6.2f} ms  p99 {p99:6.2f} ms  "
        f"max {ms[-1]:6.2f} ms   close() {close_s:5.2f} s (bound 2 s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alerts", type=int, default=200, help="alerts per receiver (200)")
    n = parser.parse_args().alerts
    logging.disable(logging.CRITICAL)  # each alert is also a WARNING log line: not what we time
    print(f"{n} distinct HIGH alerts per receiver; times are the caller's, fsync included")
    with receiver() as url:
        measure("receiver answers 200", url, n)
    with receiver(status=500) as url:
        measure("receiver answers 500", url, n)
    with receiver(delay_s=2.0) as url:
        measure("receiver answers after 2 s", url, n)
    measure("connection refused", "http://127.0.0.1:9/hook", n)


if __name__ == "__main__":
    main()
