"""`clipdex search` and `clipdex embed-text` as real processes."""

import json

import psycopg

from tests.conftest import run_cli


def test_search_prints_a_table_and_json_lines(library):
    settings, db, root = library
    env = settings.to_environ()
    table = run_cli("search", "a red car", "--limit", "3", "-f", "source=iphone", env=env).stdout.splitlines()
    assert len(table) == 3 and all("iphone" in line for line in table)
    lines = run_cli("search", "--image", str(root / "phone/DCIM/105APPLE/IMG_0001.JPG"), "--limit", "2",
                    "--json", env=env).stdout.splitlines()
    first, tail = json.loads(lines[0]), json.loads(lines[-1])
    assert first["path"] == "phone/DCIM/105APPLE/IMG_0001.JPG" and first["score"] > 0.99
    more = run_cli("search", "--cursor", tail["next_cursor"], "--json", env=env).stdout.splitlines()
    assert json.loads(more[0])["id"] != first["id"] and len(more) == 3
    alike = run_cli("search", "--like", f"{first['id']}^2", "--limit", "1", "--json", env=env).stdout
    assert json.loads(alike.splitlines()[0])["id"] == first["id"]


def test_search_errors_are_one_line(library):
    settings, _db, _root = library
    bad = run_cli("search", "x", "-f", "colour=red", env=settings.to_environ(), check=False)
    assert bad.returncode == 2 and "unknown filter 'colour'" in bad.stderr and "Traceback" not in bad.stderr
    empty = run_cli("search", env=settings.to_environ(), check=False)
    assert empty.returncode == 2 and "empty query" in empty.stderr
    for like in ("¹", "red", "-3"):
        bad_like = run_cli("search", "--like", like, env=settings.to_environ(), check=False)
        assert bad_like.returncode == 2 and "expected an image id" in bad_like.stderr, bad_like.stderr


def test_embed_text_fills_the_cache_for_psql(library):
    settings, db, _root = library
    out = run_cli("embed-text", "an old  lighthouse", env=settings.to_environ()).stdout
    assert "SELECT * FROM search_text('an old  lighthouse');" in out
    with psycopg.connect(db.url) as conn:
        assert conn.execute("SELECT count(*) FROM search_text('an old lighthouse', 4)").fetchone()[0] == 4


def test_terminal_output_escapes_control_characters(settings, tmp_path):
    """Once: `clipdex status --failures` printed file names raw; one with escape sequences set the
    terminal's title and forged an output line."""
    from tests import libraries as L

    hostile = "\x1b]0;pwned\x07evil\nrun 999  lib/forged.jpg  [read] all good\x1b[2K.jpg"
    L.write(tmp_path / "lib" / hostile, "not a picture")
    L.write(tmp_path / "lib" / "fine.png", L.png(1600))
    env = settings.to_environ()
    run_cli("index", str(tmp_path / "lib"), env=env)
    for args in (("status", "1", "--failures"), ("status", "1"), ("search", "x", "--limit", "5")):
        out = run_cli(*args, env=env).stdout
        assert "\x1b" not in out and "\x07" not in out, args
        assert not any(line.startswith("run 999") for line in out.splitlines()), args
    failures = run_cli("status", "1", "--failures", env=env).stdout
    assert "\\x1b]0;pwned\\x07evil\\x0arun 999" in failures
