"""A deadline for a request's body, under gunicorn's gevent worker (gunicorn.conf.py).

gunicorn's gevent worker gives a connection `keepalive` seconds to send its request
line and headers, but reads the body only when the application asks for it, with
no limit: a client that announces a Content-Length and then sends a byte every few
seconds would keep its connection (and a greenlet, a file descriptor) for as long
as it likes. Here every read of `wsgi.input` shares one deadline counted from the
moment the headers were in; past it the read raises werkzeug's RequestTimeout,
which the app answers as any HTTP error (408, JSON).

The timer fires inside gunicorn's own read, whose body object then marks itself
failed, so gunicorn closes the connection after the 408 instead of trying to find
the next request behind a body that never arrived.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import gevent
from werkzeug.exceptions import RequestTimeout

# A read that starts at or past the deadline still gets this long: bytes that are
# already buffered are returned, and a read that has to wait times out at once.
LAST_CHANCE_SECONDS = 0.001


class BodyDeadline:
    """WSGI middleware: the body must be read within `seconds` of the app being called."""

    def __init__(self, app: Callable, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        stream = environ.get("wsgi.input")
        if stream is not None:
            deadline = time.monotonic() + self.seconds
            environ["wsgi.input"] = DeadlineInput(stream, deadline, self.seconds)
        return self.app(environ, start_response)


class DeadlineInput:
    """`wsgi.input` with every read bounded by one deadline (a gevent timer)."""

    def __init__(self, stream: Any, deadline: float, seconds: float) -> None:
        self._stream = stream
        self._deadline = deadline
        self._seconds = seconds

    def read(self, *args: Any) -> bytes:
        return self._bounded(self._stream.read, *args)

    def readline(self, *args: Any) -> bytes:
        return self._bounded(self._stream.readline, *args)

    def readlines(self, *args: Any) -> list[bytes]:
        return self._bounded(self._stream.readlines, *args)

    def __iter__(self):
        return iter(self.readline, b"")

    def _bounded(self, read: Callable, *args: Any) -> Any:
        remaining = max(self._deadline - time.monotonic(), LAST_CHANCE_SECONDS)
        late = RequestTimeout(f"the request body did not arrive within {self._seconds:g} s")
        with gevent.Timeout(remaining, late):
            return read(*args)
