"""``clipdex serve``: the app in one process (one copy of the model) under waitress, which
survives slow clients.

Waitress reads every request, body included, in its event loop and hands a thread only a request
that has fully arrived: a client that trickles its body one byte a second holds a socket, not one
of the threads that answer searches. On top of that, a request that arrives slower than
``MIN_BYTES_PER_SECOND`` after ``GRACE_SECONDS`` is dropped, so such clients do not pile up to the
connection limit either. Bodies stay in memory (uploads never touch the disk), capped at the
upload size.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
import time

from clipdex.config import Settings

GRACE_SECONDS = 10           # any request may take this long to arrive
MIN_BYTES_PER_SECOND = 4096  # after that, it must average at least this rate
CONNECTION_LIMIT = 200


class Refused(RuntimeError):
    """The server would expose the library without protection."""


def is_loopback(host: str) -> bool:
    try:
        return all(ipaddress.ip_address(info[4][0]).is_loopback
                   for info in socket.getaddrinfo(host, None))
    except (OSError, ValueError):
        return False


def check_exposure(settings: Settings) -> None:
    if not is_loopback(settings.web_host) and not settings.access_token:
        raise Refused(
            f"refusing to serve your photos on {settings.web_host} without an access token: anyone who "
            "can reach this machine could browse them. Set CLIPDEX_ACCESS_TOKEN to a long random "
            "string (e.g. `openssl rand -hex 24`), or serve on 127.0.0.1.")


def _guarded_channel_class():
    from waitress.channel import HTTPChannel

    class GuardedChannel(HTTPChannel):
        """Remembers since when, and how many bytes of, the request being received has arrived."""

        partial_since: float | None = None
        partial_bytes = 0

        def received(self, data):
            handled = super().received(data)
            if self.request is None:        # nothing half-received: every request is complete
                self.partial_since, self.partial_bytes = None, 0
            else:
                if self.partial_since is None:
                    self.partial_since, self.partial_bytes = time.monotonic(), 0
                self.partial_bytes += len(data)
            return handled

    return GuardedChannel


def drop_slow_clients(server, maintenance, now: float) -> None:
    """Waitress's periodic maintenance, plus: close connections whose request is arriving too
    slowly (a slowloris client, or a stalled one)."""
    maintenance(now)
    clock = time.monotonic()
    for channel in list(server.active_channels.values()):
        since = getattr(channel, "partial_since", None)
        if since is None:
            continue
        elapsed = clock - since
        if elapsed > GRACE_SECONDS and channel.partial_bytes < MIN_BYTES_PER_SECOND * elapsed:
            channel.will_close = True


def make_server(settings: Settings, threads: int = 8):
    """The waitress server for the app (not started)."""
    from waitress.server import BaseWSGIServer, create_server

    from webapp import create_app

    check_exposure(settings)
    app = create_app(settings)
    app.extensions["clipdex"].preload_model()
    body_cap = app.config["MAX_CONTENT_LENGTH"]
    dispatchers: dict = {}
    server = create_server(
        app, map=dispatchers, host=settings.web_host, port=settings.web_port, threads=threads,
        ident="clipdex", max_request_body_size=body_cap, inbuf_overflow=body_cap + 1,
        connection_limit=CONNECTION_LIMIT, cleanup_interval=2, channel_timeout=60,
        asyncore_use_poll=True)
    channel_class = _guarded_channel_class()
    for dispatcher in list(dispatchers.values()):
        if isinstance(dispatcher, BaseWSGIServer):
            dispatcher.channel_class = channel_class
            dispatcher.maintenance = functools.partial(drop_slow_clients, dispatcher, dispatcher.maintenance)
    return server


def serve(settings: Settings, threads: int = 8) -> None:
    server = make_server(settings, threads)
    server.print_listen("clipdex serving on http://{}:{}")
    try:
        server.run()
    except KeyboardInterrupt:
        pass
