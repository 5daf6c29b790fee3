#!/usr/bin/env python3
"""Receives what the `http` sink of orders-ltv-http.json POSTs and prints it.

Usage: python3 samples/streaming-kafka/receive-http.py [PORT]   (default 8088)

Listens on 127.0.0.1:PORT (0 picks a free port). Every POST body (a JSON array of
documents, or JSON Lines) is answered 204 and printed one document per line to stdout.
The first line printed is `listening on http://127.0.0.1:PORT/`. Python 3 standard
library only.
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer


class Receiver(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the sink reuses its connection

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8")
        try:
            if self.headers.get("Content-Type", "").startswith("application/x-ndjson"):
                docs = [json.loads(line) for line in body.splitlines() if line.strip()]
            else:
                docs = json.loads(body)
        except ValueError as e:
            self.answer(400, f"not JSON: {e}")
            return
        for doc in docs:
            print(json.dumps(doc, separators=(",", ":")), flush=True)
        self.answer(204, "")

    def answer(self, status, text):
        data = text.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):
        pass  # stdout carries the documents only


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8088
    server = HTTPServer(("127.0.0.1", port), Receiver)
    print(f"listening on http://127.0.0.1:{server.server_port}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
