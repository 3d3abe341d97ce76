"""``clipdex serve``: the app under gunicorn in one process (one copy of the model), threaded."""

from __future__ import annotations

import ipaddress
import socket

from clipdex.config import Settings


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


def serve(settings: Settings, threads: int = 8) -> None:
    from gunicorn.app.base import BaseApplication

    from webapp import create_app

    check_exposure(settings)

    class Server(BaseApplication):
        def load_config(self):
            for key, value in {"bind": f"{settings.web_host}:{settings.web_port}", "workers": 1,
                               "threads": threads, "worker_class": "gthread", "timeout": 300,
                               "graceful_timeout": 5}.items():
                self.cfg.set(key, value)

        def load(self):
            return create_app(settings)

    Server().run()
