"""The web app stays available: slow clients cannot hold its threads, and a database that goes
away is reported at once (503) and recovered from, with real server processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from clipdex import embedded_postgres
from clipdex.config import Settings
from clipdex.database import open_database
from indexer.in_process import index_folder
from tests import libraries as L
from webapp import create_app
from webapp.server import GRACE_SECONDS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, timeout: float = 60) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture
def server(library, tmp_path):
    """`clipdex serve` as a real process on a free port."""
    settings, _db, _root = library
    port = free_port()
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "clipdex.cli", "serve", "--port", str(port)],
                            env={**{k: v for k, v in os.environ.items() if not k.startswith("CLIPDEX_")},
                                 **settings.to_environ()},
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if get(base + "/healthz", timeout=2)[0] == 200:
                break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        raise AssertionError((tmp_path / "serve.log").read_text())
    yield base, port
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


def trickler(port: int, request: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(request)
    return sock


def test_slow_clients_cannot_hold_the_server(server):
    """Once: eight clients trickling POST bodies at 1 byte/s held all 8 worker threads and searches
    timed out, without knowing the access token. Here 24 slow clients (bodies and headers)."""
    base, port = server
    body_head = (b"POST /api/search HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 100000\r\n\r\n{")
    slow = [trickler(port, body_head) for _ in range(16)]
    slow += [trickler(port, b"GET /api/search?q=x HTTP/1.1\r\nHo") for _ in range(8)]
    try:
        for i in range(5):
            for sock in slow:
                try:
                    sock.send(b" ")            # one byte a second each
                except OSError:
                    pass
            status, body = get(base + f"/api/search?q=a+sunny+beach+{i}&limit=3", timeout=60)
            assert status == 200 and len(body["results"]) == 3
            time.sleep(1)
        # The server closes them once they have been too slow for too long.
        deadline = time.monotonic() + GRACE_SECONDS + 30
        open_ones = list(slow)
        while open_ones and time.monotonic() < deadline:
            time.sleep(1)
            still = []
            for sock in open_ones:
                try:
                    sock.send(b" ")
                    sock.settimeout(0.01)
                    if sock.recv(1) == b"":
                        continue
                except (BlockingIOError, socket.timeout):
                    still.append(sock)
                except OSError:
                    continue
            open_ones = still
        assert open_ones == [], f"{len(open_ones)} slow connections are still open"
    finally:
        for sock in slow:
            sock.close()


def test_a_database_restart_is_a_503_then_recovers(tiny_model_dir, tmp_path):
    """Once: after the database restarted, the first search took 30 s and answered 500 (PoolTimeout)."""
    home = tmp_path / "pg-home"
    url = embedded_postgres.server_url(home)           # a server of this test's own, to stop freely
    settings = Settings(home=home, database_url=url, model=f"local-dir:{tiny_model_dir}", device="cpu")
    try:
        db = open_database(settings, migrate=True)
        for i in range(5):
            L.write(tmp_path / "lib" / f"p{i}.png", L.png(1300 + i))
        index_folder(settings, db, tmp_path / "lib", out=None)
        client = create_app(settings).test_client()
        assert client.get("/api/search?q=cat&limit=2").status_code == 200
        embedded_postgres.stop(home)
        started = time.monotonic()
        down = client.get("/api/search?q=cat&limit=2")
        waited = time.monotonic() - started
        assert down.status_code == 503 and "not answering" in down.get_json()["error"]["message"]
        assert waited < 25, waited              # a few seconds, not a hang
        assert client.get("/").status_code == 503
        assert embedded_postgres.server_url(home) == url
        statuses = []
        for _ in range(10):
            statuses.append(client.get("/api/search?q=cat&limit=2").status_code)
            if statuses[-1] == 200:
                break
            time.sleep(1)
        assert statuses[-1] == 200, statuses
    finally:
        embedded_postgres.stop(home)


def test_the_server_loads_the_model_when_it_starts(server):
    """The first search must not wait silently for the model: `clipdex serve` loads it at start, and
    /healthz says how far it is (the page shows "Loading the model…" meanwhile)."""
    base, _port = server
    states = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        states.append(get(base + "/healthz", timeout=5)[1]["model"])
        if states[-1] == "ready":
            break
        time.sleep(0.1)
    assert states[-1] == "ready" and set(states) <= {"loading", "ready"}
