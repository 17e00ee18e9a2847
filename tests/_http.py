"""Test helper: a real HTTP server on 127.0.0.1 for the network sources (see the `server` fixture)."""

import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


class LocalServer:
    """Routes map a path to `fn(query) -> (status, body, headers)`; body is JSON-able or bytes."""

    def __init__(self):
        self.routes = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                url = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                server.requests.append((url.path, query))
                route = server.routes.get(url.path)
                status, body, headers = route(query) if route else (404, {"error": "NotFound"}, {})
                raw = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def paths(self, path: str) -> list[dict[str, str]]:
        return [q for p, q in self.requests if p == path]
