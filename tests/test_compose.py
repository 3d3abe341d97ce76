"""docker-compose.yml is checked against the project's real settings and entry points."""

import dataclasses
import os
import importlib
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from clipdex.config import Settings

REPO = Path(__file__).resolve().parent.parent
ENV_FOR_COMPOSE = {"POSTGRES_PASSWORD": "pw", "CLIPDEX_ACCESS_TOKEN": "t", "CLIPDEX_LIBRARY": "/srv/photos",
                   "REDIS_PASSWORD": "rpw", "FLOWER_PASSWORD": "fpw"}


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def _command(service) -> list[str]:
    cmd = service["command"]
    return shlex.split(cmd) if isinstance(cmd, str) else list(cmd)


def test_services_present(compose):
    assert {"postgres", "redis", "web", "worker", "watch", "flower"} <= set(compose["services"])
    assert compose["services"]["postgres"]["image"].startswith("pgvector/pgvector:")


def test_every_clipdex_variable_is_a_real_setting(compose):
    known = {f.metadata["env"] for f in dataclasses.fields(Settings)}
    for name, service in compose["services"].items():
        for key in service.get("environment", {}):
            if key.startswith("CLIPDEX_"):
                assert key in known, f"{name}: {key} is not a clipdex setting"


def test_celery_services_point_at_the_real_app_and_queue(compose):
    from celery import Celery

    from clipdex.cli import cli
    from indexer import worker

    cmd = _command(compose["services"]["worker"])
    assert cmd[:2] == ["clipdex", "worker"] and "worker" in cli.list_commands(None)
    argv = worker.worker_argv(tuple(cmd[2:]))
    assert argv[argv.index("-Q") + 1] == worker.QUEUE
    assert argv[argv.index("--pool") + 1] in ("solo", "threads")  # CUDA must not be initialised before a fork
    cmd = _command(compose["services"]["flower"])
    assert cmd[0] == "celery"
    module = importlib.import_module(cmd[cmd.index("-A") + 1])
    assert isinstance(module.app, Celery) and module.app.conf.task_default_queue == worker.QUEUE


def test_web_runs_the_real_server(compose):
    from flask import Flask

    from clipdex.cli import cli

    cmd = _command(compose["services"]["web"])
    assert cmd[:2] == ["clipdex", "serve"] and "serve" in cli.list_commands(None)
    # The app refuses a public address without a token: compose binds 0.0.0.0 and sets one.
    env = compose["services"]["web"]["environment"]
    assert cmd[cmd.index("--host") + 1] == env["CLIPDEX_WEB_HOST"]
    assert env["CLIPDEX_ACCESS_TOKEN"].startswith("${CLIPDEX_ACCESS_TOKEN:?")
    # The WSGI entry for other servers still builds the real app.
    assert isinstance(importlib.import_module("webapp.wsgi").app, Flask)


def test_wiring_between_services(compose):
    services = compose["services"]
    for name in ("web", "worker", "watch", "flower", "migrate"):
        env = services[name]["environment"]
        settings = Settings.from_env({k: v for k, v in env.items() if k.startswith("CLIPDEX_")})
        assert "@postgres:5432/" in settings.database_url
        assert settings.broker_url.startswith("redis://:${REDIS_PASSWORD:?") and "@redis:6379/" in settings.broker_url
    assert _command(services["migrate"]) == ["clipdex", "db", "upgrade"]
    # The watcher watches the library's mount and queues for the workers (a broker is set).
    watch = _command(services["watch"])
    assert watch[:2] == ["clipdex", "watch"] and watch[2] == services["watch"]["environment"]["CLIPDEX_ROOTS"].split("=")[1]
    # The library is mounted read-only where CLIPDEX_ROOTS says it is.
    for name in ("web", "worker", "watch"):
        roots = Settings.from_env({"CLIPDEX_ROOTS": services[name]["environment"]["CLIPDEX_ROOTS"]}).roots
        mounts = [v for v in services[name]["volumes"] if v.endswith(":ro")]
        assert any(m.split(":")[-2] == str(roots["photos"]) for m in mounts)
    gpu = services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    assert "pgdata" in compose["volumes"]


def test_docker_compose_accepts_the_file():
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("Debian's docker-compose is not installed")

    proc = subprocess.run([exe, "-f", str(REPO / "docker-compose.yml"), "config", "-q"],
                          env={**os.environ, **ENV_FOR_COMPOSE}, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_secure_by_default(compose):
    """Nothing that can run or read work is reachable without a password, and the database, broker
    and Flower listen only where the user says (loopback unless CLIPDEX_BIND names an interface)."""
    services = compose["services"]
    redis = _command(services["redis"])
    assert redis[redis.index("--requirepass") + 1].startswith("${REDIS_PASSWORD:?")
    flower = _command(services["flower"])
    assert any(a.startswith("--basic-auth=") and "${FLOWER_PASSWORD:?" in a for a in flower)
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    for name in ("postgres", "redis", "flower"):
        for port in services[name]["ports"]:
            assert port.startswith("${CLIPDEX_BIND:-127.0.0.1}:"), (name, port)
    web = services["web"]
    assert web["environment"]["CLIPDEX_ACCESS_TOKEN"].startswith("${CLIPDEX_ACCESS_TOKEN:?")
