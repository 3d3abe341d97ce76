"""Importing clipdex loads no model, opens no connection and does not pull in torch."""

import subprocess
import sys

MODULES = ["clipdex.cli", "clipdex.config", "clipdex.database", "clipdex.model", "clipdex.embedded_postgres",
           "indexer.worker", "webapp", "webapp.wsgi"]


def test_import_is_light():
    code = (
        "import sys, socket\n"
        "opened = []\n"
        "real = socket.socket.connect\n"
        "def spy(self, addr): opened.append(addr); return real(self, addr)\n"
        "socket.socket.connect = spy\n"
        f"for m in {MODULES!r}: __import__(m)\n"
        "heavy = [m for m in ('torch', 'open_clip', 'psycopg_pool') if m in sys.modules]\n"
        "print(heavy, opened)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[] []"


def test_help_works_without_a_database_or_model():
    out = subprocess.run([sys.executable, "-m", "clipdex.cli", "--help"], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "CLIPDEX_DATABASE_URL": "postgresql://nobody@0.0.0.0:1/x"})
    assert out.returncode == 0 and "db" in out.stdout
