"""The HTTP side of `sslall serve`: Label Studio's ML backend protocol on a stdlib
`ThreadingHTTPServer` (the answers come from `sslall.labelstudio._backend.Backend`).

Every answer is JSON. A malformed request gets a 4xx with `{"error": "<one line>"}`; a failure
of the model or the workspace a 5xx with its one line; an unexpected exception is logged with
its traceback and answered 500 in one line. No request stops the server.
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from sslall.errors import LockBusy, ModelError, NotFoundError, SslallError, UsageError
from sslall.labelstudio._backend import Backend

__all__ = ["MAX_BODY", "BackendServer", "make_server"]

log = logging.getLogger("sslall.serve")
MAX_BODY = 64 * 1024 * 1024  # a predict of many tasks is a few MB; refuse anything absurd
GET_ROUTES = ("health", "")
POST_ROUTES = ("setup", "predict", "webhook", "train", "validate")


class BackendServer(ThreadingHTTPServer):
    """A threading HTTP server holding the backend its handlers answer from."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], backend: Backend) -> None:
        self.backend = backend
        super().__init__(address, _Handler)


def make_server(backend: Backend, host: str = "127.0.0.1", port: int = 9090) -> BackendServer:
    """A server bound to `host:port` (port 0: any free port; see `server_address`).

    Raises:
        UsageError: the address cannot be bound (in use, or not an address of this machine).
    """
    try:
        return BackendServer((host, port), backend)
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; pass "
                         "--port (or --host)") from None


def _status_of(exc: SslallError) -> HTTPStatus:
    if isinstance(exc, NotFoundError):
        return HTTPStatus.SERVICE_UNAVAILABLE  # no model yet: Label Studio shows the line
    if isinstance(exc, LockBusy):
        return HTTPStatus.CONFLICT
    if isinstance(exc, UsageError) and not isinstance(exc, ModelError):  # a damaged model: ours
        return HTTPStatus.BAD_REQUEST
    return HTTPStatus.INTERNAL_SERVER_ERROR


def _one_line(text: str) -> str:
    return " ".join(text.split())[:500]


class _Handler(BaseHTTPRequestHandler):
    server: BackendServer
    protocol_version = "HTTP/1.1"
    server_version = "sslall-serve"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        log.info("%s %s", self.address_string(), format % args)

    def _send(self, status: HTTPStatus, body: dict) -> None:
        data = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self) -> str:
        return self.path.split("?", 1)[0].strip("/")

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        route = self._route()
        if route not in GET_ROUTES:
            self._send(HTTPStatus.NOT_FOUND, {"error": f"no GET /{route} here (GET /health)"})
            return
        self._answer(lambda: self.server.backend.health())

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        route = self._route()
        if route not in POST_ROUTES:
            self._discard_body()
            self._send(HTTPStatus.NOT_FOUND, {"error": f"no POST /{route} here (setup, predict, "
                                                       "webhook)"})
            return
        body = self._json_body()
        if body is None:
            return
        backend = self.server.backend
        handlers = {"setup": backend.setup, "predict": backend.predict, "webhook": backend.webhook,
                    "train": lambda b: backend.webhook({"action": "START_TRAINING"}),
                    "validate": lambda b: {"status": "ok"}}
        self._answer(lambda: handlers[route](body))

    def _discard_body(self) -> None:
        length = self.headers.get("Content-Length")
        if length and length.isdigit() and int(length) <= MAX_BODY:
            self.rfile.read(int(length))
        else:
            self.close_connection = True

    def _json_body(self) -> dict | None:
        """The request's JSON object, or None after answering 400/413."""
        length = self.headers.get("Content-Length", "")
        if not length.isdigit():
            self.close_connection = True
            self._send(HTTPStatus.LENGTH_REQUIRED, {"error": "a JSON body with Content-Length "
                                                             "is required"})
            return None
        if int(length) > MAX_BODY:
            self.close_connection = True
            self._send(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                       {"error": f"the body is over {MAX_BODY // 2**20} MiB"})
            return None
        raw = self.rfile.read(int(length))
        try:
            body = json.loads(raw or b"{}")
        except (ValueError, UnicodeDecodeError) as exc:
            self._send(HTTPStatus.BAD_REQUEST, {"error": _one_line(f"the body is not JSON: {exc}")})
            return None
        if not isinstance(body, dict):
            self._send(HTTPStatus.BAD_REQUEST, {"error": "the body must be a JSON object"})
            return None
        return body

    def _answer(self, fn: Any) -> None:
        try:
            result = fn()
        except SslallError as exc:
            self._send(_status_of(exc), {"error": _one_line(str(exc))})
            return
        except Exception as exc:  # noqa: BLE001 - a request must never stop the server
            log.exception("serve: unexpected error on %s", self.path)
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR,
                       {"error": _one_line(f"unexpected {type(exc).__name__}: {exc}")})
            return
        self._send(HTTPStatus.OK, result)
