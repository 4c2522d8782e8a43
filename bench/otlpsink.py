"""A local OTLP/HTTP trace receiver for the tracing row: accepts every export and answers
200 with an empty `ExportTraceServiceResponse`, counting the spans' bytes it was sent.

`python -m bench.otlpsink --port N`; `GET /stats` answers the exports and bytes received.
"""

import argparse
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _Totals:
    exports = 0
    received = 0
    lock = threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        size = int(self.headers.get("content-length", "0"))
        self.rfile.read(size)
        with _Totals.lock:
            _Totals.exports += 1
            _Totals.received += size
        self._answer(200, b"", "application/x-protobuf")

    def do_GET(self) -> None:
        body = json.dumps({"exports": _Totals.exports, "bytes": _Totals.received}).encode()
        self._answer(200, body, "application/json")

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    port = parser.parse_args().port
    ThreadingHTTPServer(("127.0.0.1", port), _Handler).serve_forever()


if __name__ == "__main__":
    main()
