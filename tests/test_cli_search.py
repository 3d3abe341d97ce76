"""`clipdex search` and `clipdex embed-text` as real processes."""

import json

import psycopg

from tests.conftest import run_cli


def test_search_prints_a_table_and_json_lines(library):
    settings, db, root = library
    env = settings.to_environ()
    proc = run_cli("search", "a red car", "--limit", "3", "-f", "source=iphone", env=env)
    header, *table = proc.stdout.splitlines()
    assert header.split() == ["id", "taken", "size", "source", "path"]
    assert len(table) == 3 and all("iphone" in line for line in table)
    # Columns line up under the header; the id is what --like takes; the next page is one command away.
    assert len({line.index("iphone") for line in table}) == 1 == len({header.index("source")} | {
        line.index("iphone") for line in table})
    assert proc.stderr.startswith("more: clipdex search --cursor ")
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
    weight = run_cli("search", "car^x", env=settings.to_environ(), check=False)
    assert weight.returncode == 2 and "expected a number after ^" in weight.stderr
    first = run_cli("search", "car", "--limit", "2", "--json", env=settings.to_environ()).stdout.splitlines()
    cursor = json.loads(first[-1])["next_cursor"]
    mixed = run_cli("search", "boat", "--cursor", cursor, env=settings.to_environ(), check=False)
    assert mixed.returncode == 2 and "give it alone" in mixed.stderr
    for like in ("¹", "red", "-3"):
        bad_like = run_cli("search", "--like", like, env=settings.to_environ(), check=False)
        assert bad_like.returncode == 2 and "expected an image id" in bad_like.stderr, bad_like.stderr


def test_filters_alone_list_photos_newest_first(library):
    settings, db, _root = library
    env = settings.to_environ()
    out = run_cli("search", "-f", "source=iphone", "--json", env=env).stdout.splitlines()
    hits = [json.loads(line) for line in out[:-1]]
    assert json.loads(out[-1])["strategy"] == "newest" and hits
    with psycopg.connect(db.url) as conn:
        expected = [r[0] for r in conn.execute(
            "SELECT DISTINCT i.id, i.taken_at FROM images i JOIN locations l ON l.image_id = i.id "
            "WHERE l.source = 'iphone' ORDER BY i.taken_at DESC NULLS LAST, i.id DESC")]
    assert [h["id"] for h in hits] == expected


def test_status_of_a_run_that_does_not_exist(library):
    settings, _db, _root = library
    for args in (("status", "424242"), ("status", "424242", "--failures")):
        proc = run_cli(*args, env=settings.to_environ(), check=False)
        assert proc.returncode == 1 and "there is no run 424242" in proc.stderr


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
    from clipdex.database import open_database
    from indexer.in_process import index_folder

    index_folder(settings, open_database(settings), tmp_path / "lib", out=None)
    for args in (("status", "1", "--failures"), ("status", "1"), ("search", "x", "--limit", "5")):
        out = run_cli(*args, env=env).stdout
        assert "\x1b" not in out and "\x07" not in out, args
        assert not any(line.startswith("run 999") for line in out.splitlines()), args
    failures = run_cli("status", "1", "--failures", env=env).stdout
    assert "\\x1b]0;pwned\\x07evil\\x0arun 999" in failures


def test_a_search_for_a_cached_text_never_imports_torch(library):
    """The text cache answers: the command must not pay seconds to import PyTorch and load the model."""
    import subprocess
    import sys

    settings, _db, _root = library
    run_cli("embed-text", "a quiet lake", env=settings.to_environ())
    code = ("import sys\nfrom clipdex.cli import cli\n"
            "cli.main(args=sys.argv[1:], standalone_mode=False)\n"
            "print('torch imported' if 'torch' in sys.modules else 'no torch')\n")
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("CLIPDEX_")}
    for text, expected in (("a quiet lake", "no torch"), ("a text never asked before", "torch imported")):
        out = subprocess.run([sys.executable, "-c", code, "search", text, "--limit", "2"],
                             env={**env, **settings.to_environ()}, capture_output=True, text=True, check=True)
        assert out.stdout.strip().endswith(expected), (text, out.stdout, out.stderr)


def test_config_prints_only_what_applies(library):
    settings, _db, _root = library
    out = run_cli("config", env={**settings.to_environ(), "CLIPDEX_ACCESS_TOKEN": "s3cret"}).stdout
    assert "CLIPDEX_MODEL=local-dir:" in out and "CLIPDEX_PRETRAINED" not in out   # a local-dir: model's own weights
    assert "CLIPDEX_ACCESS_TOKEN=***" in out and "s3cret" not in out
    builtin = run_cli("config", env={"CLIPDEX_MODEL": "ViT-B-32"}).stdout
    assert "CLIPDEX_PRETRAINED=laion2b_s34b_b79k" in builtin


def test_db_index_says_what_it_did(library):
    settings, _db, _root = library
    out = run_cli("db", "index", env=settings.to_environ()).stdout
    assert "embeddings_hnsw_model_1 already there" in out


def _json_search(env: dict, *args: str) -> tuple[list[dict], dict]:
    lines = run_cli("search", *args, "--json", env=env).stdout.splitlines()
    return [json.loads(line) for line in lines[:-1]], json.loads(lines[-1])


def test_captions_albums_and_file_names_are_searched_by_their_words(library):
    settings, _db, _root = library
    env = settings.to_environ()
    with psycopg.connect(settings.database_url) as conn:
        ids = {relpath.rsplit("/", 2)[-2] + "/" + relpath.rsplit("/", 1)[-1]: image_id
               for relpath, image_id in conn.execute("SELECT relpath, image_id FROM locations")}
        total = conn.execute("SELECT count(*) FROM images").fetchone()[0]
    beach, later = ids["Photos from 2023/IMG_1234.JPG"], ids["Trip to Gdańsk/IMG_9999.jpg"]
    assert ids["Trip to Gdańsk/IMG_1234.JPG"] == beach           # the same bytes in the album

    caption, _ = _json_search(env, "--text", "du texte")          # the sidecar's description
    assert [h["id"] for h in caption] == [beach]
    assert caption[0]["snippet_from"] == "caption" and caption[0]["snippet"] == "Ici c'est du texte"
    assert caption[0]["marks"] == [[10, 18]]
    album, _ = _json_search(env, "--text", "GDAŃSK")                 # an album, any case
    assert sorted(h["id"] for h in album) == sorted({beach, later})
    named, _ = _json_search(env, "--text", "MVIMG_20191230")        # a file name, without its extension
    assert [h["id"] for h in named] == [ids["Photos from 2023/MVIMG_20191230_232926.jpg"]]
    assert named[0]["snippet_from"] == "file name" and named[0]["snippet"] == "MVIMG_20191230_232926.jpg"
    assert _json_search(env, "--text", "texte du")[0] == []          # the words, not that phrase

    # A query: the photo with the words in its caption, then those with them in an album name,
    # then every other photo; pages of one neither repeat nor skip across the tiers.
    hits, tail = _json_search(env, "trip to gdańsk du texte", "--mode", "vector")
    assert not any(h["written"] for h in hits)
    seen, tiers = [], []
    page, tail = _json_search(env, "du texte", "trip to Gdańsk", "--limit", "1")
    while True:
        seen += [h["id"] for h in page]
        tiers += [h["snippet_from"] for h in page]
        if not tail["next_cursor"]:
            break
        page, tail = _json_search(env, "--cursor", tail["next_cursor"])
    assert seen[0] == beach and tiers[0] == "caption"
    assert seen[1] == later and tiers[1] == "album"
    assert len(seen) == len(set(seen)) == total and tiers[2:] == [None] * (total - 2)
    _, first_tail = _json_search(env, "du texte", "trip to Gdańsk")
    assert first_tail["strategy"].startswith("written exact, then named exact, then ")
