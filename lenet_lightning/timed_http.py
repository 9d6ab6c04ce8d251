"""HTTP connections that can never hang: a connect timeout, a per-read timeout, and a deadline for the head.

A socket timeout bounds each read, not a response: a server that sends one header byte
every few seconds would keep urllib waiting for ever. Here a timer shuts the socket down
when the whole head (connecting included) has not arrived in time.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import urllib.request
from typing import Any


class HeadTimeoutError(TimeoutError):
    """The response head did not arrive within its deadline (:attr:`lenet_lightning.transfer.Limits.head_s`)."""


def _timed_connection(connection_class: type[http.client.HTTPConnection], stall_s: float, head_s: float) -> Any:
    """``connection_class`` connecting with the caller's (short) timeout, then reading with ``stall_s``,
    under one deadline (``head_s``) for everything up to the end of the response head."""

    class Connection(connection_class):  # type: ignore[valid-type,misc]
        head_timer: threading.Timer | None = None
        head_expired = False

        def connect(self) -> None:
            self.head_timer = threading.Timer(head_s, self._expire_head)
            self.head_timer.daemon = True
            self.head_timer.start()
            super().connect()
            self.sock.settimeout(stall_s)

        def _expire_head(self) -> None:
            # Shutting the socket down ends whatever read is waiting: the only way to interrupt it from here.
            self.head_expired = True
            with contextlib.suppress(OSError, AttributeError):
                self.sock.shutdown(socket.SHUT_RDWR)

        def _stop_head_timer(self) -> None:
            if self.head_timer is not None:
                self.head_timer.cancel()

        def getresponse(self) -> http.client.HTTPResponse:
            try:
                response = super().getresponse()
            except (OSError, http.client.HTTPException):
                if self.head_expired:
                    raise HeadTimeoutError from None
                raise
            finally:
                self._stop_head_timer()
            if self.head_expired:  # the deadline passed while the head was being parsed: it may be cut short
                response.close()
                raise HeadTimeoutError
            return response

        def close(self) -> None:
            self._stop_head_timer()
            super().close()

    return Connection


class TimedHTTPHandler(urllib.request.HTTPHandler):
    """http:// with a per-read timeout of ``stall_s`` and ``head_s`` for the whole response head."""

    def __init__(self, stall_s: float, head_s: float) -> None:
        super().__init__()
        self.connection = _timed_connection(http.client.HTTPConnection, stall_s, head_s)

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self.connection, req)


class TimedHTTPSHandler(urllib.request.HTTPSHandler):
    """https:// with a per-read timeout of ``stall_s`` and ``head_s`` for the whole response head."""

    def __init__(self, stall_s: float, head_s: float) -> None:
        super().__init__()
        self.connection = _timed_connection(http.client.HTTPSConnection, stall_s, head_s)

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self.connection, req)
