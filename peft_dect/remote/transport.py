"""HTTP transport of the black-box client: a whole-request deadline and redirects within the origin only.

urllib's own timeout bounds each socket read, not a request, and its redirect handler follows any host with the
Authorization header; these handlers close both gaps.
"""

from __future__ import annotations

import http.client
import socket
import threading
import urllib.request
from urllib.parse import urlsplit


class Transient(Exception):
    """A failed attempt worth retrying (timeout, broken connection, 429/5xx); the message says what happened."""


class Deadline:
    """A request's total time limit: a timer that shuts the request's socket down when it runs out, so that neither
    slow headers nor a dripping body hold the request longer than `seconds` (the socket timeout bounds each read
    only)."""

    def __init__(self, seconds: float) -> None:
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            expired = self.expired
        if expired:
            shutdown(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            sockets = list(self._sockets)
        for sock in sockets:
            shutdown(sock)

    def cancel(self) -> None:
        self._timer.cancel()


def shutdown(sock: socket.socket) -> None:
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the plain socket's, under TLS too: wakes a blocked read
    except OSError:
        pass


class WatchedConnection:
    """A connection whose socket its request's `Deadline` watches from the moment it connects; mixed into
    http.client's HTTP and HTTPS connections (for HTTPS the socket watched is the TLS one)."""

    def __init__(self, *args, deadline: Deadline, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.deadline = deadline

    def connect(self) -> None:
        super().connect()
        self.deadline.watch(self.sock)


class WatchedHTTPConnection(WatchedConnection, http.client.HTTPConnection):
    """An HTTP connection under a request deadline."""


class WatchedHTTPSConnection(WatchedConnection, http.client.HTTPSConnection):
    """An HTTPS connection under a request deadline."""


class DeadlineHandler:
    """A urllib handler that opens its connections under a request's `Deadline` (mixed into urllib's HTTP and
    HTTPS handlers, whose `*_open` methods name the connection class)."""

    def __init__(self, deadline: Deadline) -> None:
        super().__init__()
        self.deadline = deadline


class WatchedHTTPHandler(DeadlineHandler, urllib.request.HTTPHandler):
    def http_open(self, req):
        return self.do_open(WatchedHTTPConnection, req, deadline=self.deadline)


class WatchedHTTPSHandler(DeadlineHandler, urllib.request.HTTPSHandler):
    def https_open(self, req):
        return self.do_open(WatchedHTTPSConnection, req, deadline=self.deadline)


def origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or {"http": 80, "https": 443}.get(scheme)


class SameOriginRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect within the request's origin only, re-sending the same POST (urllib's own handler turns it
    into a GET, which no API answers, and follows it to any host with the Authorization header)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if origin(newurl) != origin(req.full_url):
            fp.close()
            raise ValueError(
                f"{req.full_url} redirected (HTTP {code}) to {newurl}, another origin: peft-dect does not follow it, "
                "so that neither the request nor the API key goes to a host you did not name. If that server is the "
                "one you mean, pass its URL as url= (or embedding_url=)."
            )
        return urllib.request.Request(
            newurl, data=req.data, headers=dict(req.headers), method=req.get_method(), unverifiable=True
        )
