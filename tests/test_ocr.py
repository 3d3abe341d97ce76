"""Text in photos: real PP-OCRv4 weights (from the rapidocr-onnxruntime wheel) read rendered
screenshots, receipts and a sideways photo; the words are found through the CLI, the JSON API and
psql, Traditional Chinese finds Simplified, and a photo that cannot be read is a failure of stage
'ocr' that stays searchable by its vector."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import psycopg
import pytest
from PIL import Image, ImageDraw, ImageFont

from clipdex.search.words import compact, query_words, text_words, tsquery_of
from tests.conftest import run_cli
from tests.test_browser import browser  # noqa: F401  (the module's Playwright browser fixture)

FONT = Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc")
SC = 2          # the face index of Noto Sans CJK SC in the collection


def render(lines: list[str], size=(900, 360), background="white", rotate: int = 0) -> Image.Image:
    font = ImageFont.truetype(str(FONT), 40, index=SC)
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    for n, line in enumerate(lines):
        draw.text((40, 40 + 90 * n), line, fill="black", font=font)
    return image.rotate(rotate, expand=True) if rotate else image


def textless_photo(seed: int) -> Image.Image:
    """Smooth colour fields, as a sky or a wall: nothing a detector should take for text."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:480, 0:640] / 480.0
    channels = [np.clip(255 * (rng.random() * x + rng.random() * y) / 2, 0, 255) for _ in range(3)]
    return Image.fromarray(np.stack(channels, -1).astype(np.uint8))


PHOTOS = {
    "chat/receipt.png": render(["发票号码 04412938", "合计 128.00 元"]),
    "chat/boarding.png": render(["Flight MU5137", "Gate 23  Seat 14C"]),
    "chat/traditional.png": render(["臺灣高鐵 車票"]),
    "phone/sideways.jpg": render(["星巴克 Starbucks"], rotate=90),
    "phone/sky.jpg": textless_photo(1),
}


@pytest.fixture(scope="module")
def read_library(pg_url, template_url, tiny_model_dir, tmp_path_factory):
    from clipdex.config import Settings
    from tests.conftest import fresh_database

    if not FONT.exists():
        pytest.fail(f"{FONT} is missing: ./bootstrap test installs Debian's fonts-noto-cjk")
    tmp = tmp_path_factory.mktemp("ocr")
    root = tmp / "lib"
    for name, image in PHOTOS.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        image.save(root / name)
    settings = Settings(home=tmp / "home", database_url=fresh_database(pg_url, "ocr_library"),
                        model=f"local-dir:{tiny_model_dir}", device="cpu", ocr=True)
    env = settings.to_environ()
    indexed = run_cli("index", str(root), env=env)
    return settings, env, root, indexed


def ids_by_name(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        return {relpath: image_id for relpath, image_id in conn.execute("SELECT relpath, image_id FROM locations")}


def found(env: dict, *args: str) -> list[int]:
    lines = run_cli("search", *args, "--json", env=env).stdout.splitlines()
    return [json.loads(line)["id"] for line in lines[:-1]]


def test_words_fold_and_pair_as_both_sides_need():
    assert text_words("發票 ＭＵ５１３７") == ["发", "发票", "票", "mu5137", "mu", "5137"]
    assert query_words("发票号码") == [("发票", False), ("票号", False), ("号码", False)]
    assert query_words("票") == [("票", False)]                    # one character: looked up alone
    assert compact("Gate 23, Seat") == "gate23seat"
    # Quotes and operators in a query are words, never tsquery syntax.
    assert tsquery_of(query_words("it's & !x")) == "'it':* & 's':* & 'x':*"


def test_index_reads_the_text_and_search_finds_it(read_library):
    settings, env, root, indexed = read_library
    assert "read the text of 5 photos: 4 with text, 0 failed" in indexed.stdout
    ids = ids_by_name(settings.database_url)
    with psycopg.connect(settings.database_url) as conn:
        texts = dict(conn.execute("SELECT l.relpath, t.text FROM image_texts t JOIN locations l USING (image_id)"))
    assert compact("发票号码04412938") in compact(texts["chat/receipt.png"])
    assert texts["phone/sky.jpg"] == ""

    assert "text in photos: read 5 of 5 photos, 4 with text, 0 failed" in run_cli("status", env=env).stdout
    # Per run too: in `clipdex status RUN`, its JSON and the status page.
    from webapp import create_app

    with psycopg.connect(settings.database_url) as conn:
        run_id = conn.execute("SELECT max(id) FROM ingest_runs").fetchone()[0]
    assert "  text in photos: read 5 of 5 photos, 4 with text, 0 failed\n" in run_cli("status", str(run_id), env=env).stdout
    as_json = json.loads(run_cli("status", str(run_id), "--json", env=env).stdout)
    assert as_json["text"] == {"photos": 5, "read": 5, "with_text": 4, "failed": 0}
    page = create_app(settings).test_client().get(f"/status/{run_id}").get_data(as_text=True)
    assert "text in photos: read 5 of 5 photos, 4 with text, 0 failed" in page
    assert found(env, "--text", "发票") == [ids["chat/receipt.png"]]
    assert found(env, "--text", "發票") == [ids["chat/receipt.png"]]         # Traditional finds Simplified
    assert found(env, "--text", "台湾高铁") == [ids["chat/traditional.png"]]  # and the other way round
    assert found(env, "--text", "MU5137") == [ids["chat/boarding.png"]]
    assert found(env, "--text", "5137") == [ids["chat/boarding.png"]]        # a flight number by its digits
    assert found(env, "--text", "gate 23") == [ids["chat/boarding.png"]]
    assert found(env, "--text", "gate 14") == []                             # both words, not that phrase
    assert found(env, "--text", "星巴克") == [ids["phone/sideways.jpg"]]       # read though it lies on its side
    # With a query, the words filter the vector ranking like any other filter.
    assert found(env, "a receipt", "--text", "04412938") == [ids["chat/receipt.png"]]
    assert found(env, "--text", "合计", "-f", "source=iphone") == []
    bad = run_cli("search", "--text", "!!", env=env, check=False)
    assert bad.returncode == 2 and "no letters or digits" in bad.stderr


def test_the_api_and_psql_find_the_words(read_library):
    from webapp import create_app

    settings, _env, _root, _indexed = read_library
    ids = ids_by_name(settings.database_url)
    client = create_app(settings).test_client()
    body = client.get("/api/search?text=Starbucks").get_json()
    assert [hit["id"] for hit in body["results"]] == [ids["phone/sideways.jpg"]]
    first = client.get("/api/search?q=發票&limit=3").get_json()["results"][0]
    assert first["id"] == ids["chat/receipt.png"] and first["written"]
    assert first["snippet"][slice(*first["marks"][0])] == "发票"
    assert client.get("/api/search?text=%20%3F").status_code == 400
    page = client.get(f"/images/{ids['chat/receipt.png']}").get_data(as_text=True)
    assert "Text in the photo" in page and "04412938" in page
    with psycopg.connect(settings.database_url) as conn:
        rows = conn.execute("SELECT id, ocr_text FROM search_ocr('MU 5137')").fetchall()
        assert [r[0] for r in rows] == [ids["chat/boarding.png"]] and "MU5137" in rows[0][1]
        assert conn.execute("SELECT ocr_text FROM photos WHERE id = %s",
                            (ids["chat/receipt.png"],)).fetchone()[0].startswith("发票")


def test_a_read_only_role_searches_the_words(read_library):
    from tests.conftest import read_only_role
    from webapp import create_app

    settings, env, _root, _indexed = read_library
    ids = ids_by_name(settings.database_url)
    with read_only_role(settings.database_url) as reader_url:
        client = create_app(settings.replace(database_url=reader_url)).test_client()
        body = client.get("/api/search?text=發票").get_json()
        assert [hit["id"] for hit in body["results"]] == [ids["chat/receipt.png"]]
        first = client.get("/api/search?q=starbucks&limit=2").get_json()
        assert first["results"][0]["id"] == ids["phone/sideways.jpg"] and first["results"][0]["written"]
        rest = client.get("/api/search?cursor=" + first["next_cursor"]).get_json()["results"]
        assert rest and not any(hit["written"] for hit in rest)
        reader_env = {**env, "CLIPDEX_DATABASE_URL": reader_url}
        assert found(reader_env, "--text", "MU5137") == [ids["chat/boarding.png"]]
        with psycopg.connect(reader_url) as conn:
            assert [r[0] for r in conn.execute("SELECT id FROM search_ocr('04412938')")] == [ids["chat/receipt.png"]]


def search_json(env: dict, *args: str) -> tuple[list[dict], dict]:
    lines = run_cli("search", *args, "--json", env=env).stdout.splitlines()
    return [json.loads(line) for line in lines[:-1]], json.loads(lines[-1])


def test_a_query_puts_the_photos_with_its_words_first_and_pages_through_the_rest(read_library):
    settings, env, _root, _indexed = read_library
    ids = ids_by_name(settings.database_url)
    hits, tail = search_json(env, "MU5137")
    assert hits[0]["id"] == ids["chat/boarding.png"] and hits[0]["written"]
    assert hits[0]["snippet"] == "Flight MU5137" and hits[0]["marks"] == [[7, 13]]
    assert not any(h["written"] for h in hits[1:]) and len(hits) == len(PHOTOS)   # then every other photo
    assert tail["strategy"].startswith("written exact, then ")
    vector, vector_tail = search_json(env, "MU5137", "--mode", "vector")
    assert not any(h["written"] for h in vector) and "written" not in vector_tail["strategy"]
    only, _ = search_json(env, "星巴克", "--mode", "text")
    assert [h["id"] for h in only] == [ids["phone/sideways.jpg"]]
    # Pages of two: the written photo first, then the rest, none twice, none left out.
    seen, (page, tail) = [], search_json(env, "starbucks", "--limit", "2")
    while True:
        seen += [h["id"] for h in page]
        if not tail["next_cursor"]:
            break
        page, tail = search_json(env, "--cursor", tail["next_cursor"])
    assert seen[0] == ids["phone/sideways.jpg"] and sorted(seen) == sorted(ids.values())
    bad = run_cli("search", "!!", "--mode", "text", env=env, check=False)
    assert bad.returncode == 2 and "mode=text" in bad.stderr


@pytest.mark.browser
def test_the_page_highlights_the_words_under_the_photo_and_the_detail_page_shows_the_text(
        read_library, browser, tmp_path):
    from tests.test_browser import new_page, serving

    settings, _env, _root, _indexed = read_library
    ids = ids_by_name(settings.database_url)
    with serving(settings, tmp_path / "serve.log") as base:
        page = new_page(browser, 900)
        page.goto(base + "/?q=MU5137")
        page.wait_for_selector(".tile .snippet mark")
        first = page.locator(".tile").first
        assert first.get_attribute("data-id") == str(ids["chat/boarding.png"])
        assert first.locator(".snippet").inner_text() == "Flight MU5137"
        assert first.locator(".snippet mark").inner_text() == "MU5137"
        # Words in a file name: the name, labelled, under the photo.
        page.goto(base + "/?q=boarding")
        page.wait_for_selector(".tile .snippet mark")
        first = page.locator(".tile").first
        assert first.get_attribute("data-id") == str(ids["chat/boarding.png"])
        assert first.locator(".snippet").inner_text() == "file name: boarding.png"
        assert first.locator(".snippet mark").inner_text() == "boarding"
        page.goto(f"{base}/images/{ids['chat/receipt.png']}")
        assert "04412938" in page.locator("#ocr-text").inner_text()


def test_a_second_pass_reads_nothing_and_a_changed_file_is_an_ocr_failure(read_library, tmp_path):
    settings, env, root, _indexed = read_library
    again = run_cli("ocr", str(root), env=env)
    assert again.stdout == "" and "reading text" not in again.stderr
    ids = ids_by_name(settings.database_url)
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        conn.execute("DELETE FROM image_texts WHERE image_id = %s", (ids["chat/boarding.png"],))
    (root / "chat/boarding.png").write_bytes((root / "chat/receipt.png").read_bytes())
    failed = run_cli("ocr", "--all", env=env)
    assert "read the text of 0 photos: 0 with text, 1 failed" in failed.stdout
    assert "has changed since it was indexed" in failed.stderr
    with psycopg.connect(settings.database_url) as conn:
        error = conn.execute("SELECT error FROM image_texts WHERE image_id = %s",
                             (ids["chat/boarding.png"],)).fetchone()[0]
    assert "changed since it was indexed" in error
    assert found(env, "--text", "MU5137") == []
    # Read as part of a run, the failure is in the run's list with its stage.
    from clipdex.roots import known_roots
    from indexer.ocr import OcrEngine
    from indexer.ocr_run import Scope, read_texts

    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        run_id = conn.execute("SELECT max(id) FROM ingest_runs").fetchone()[0]
        engine = OcrEngine(device="auto")     # no onnxruntime-gpu here: the CPU provider reads
        summary = read_texts(settings, conn, engine, known_roots(conn), Scope(retry_failed=True),
                             run_id=run_id, out=None)
    assert (summary.read, summary.failed) == (0, 1) and engine.provider == "cpu"
    listed = run_cli("status", str(run_id), "--failures", env=env).stdout
    assert "ocr" in listed and "changed since it was indexed" in listed and "boarding.png" in listed
    # The photo stays searchable by its vector.
    assert ids["chat/boarding.png"] in found(env, "a boarding pass", "--limit", "10")


@pytest.mark.celery
def test_celery_embed_workers_send_the_photos_to_an_ocr_worker(settings, redis_url, tmp_path):
    from clipdex.database import open_database
    from indexer.producer import enqueue, plan_run
    from tests.workers import run_finished, start_worker, stop_worker, wait_for, wait_ready

    library = tmp_path / "lib"
    library.mkdir()
    render(["Wi-Fi 密码 hunter2024"]).save(library / "wifi.png")
    textless_photo(2).save(library / "wall.png")
    producer = settings.replace(broker_url=redis_url, ocr=True, task_files=1)
    db = open_database(producer)
    plan = plan_run(producer, db, library, mode="celery")
    logs = tmp_path / "logs"
    logs.mkdir()
    procs = [start_worker(producer, "gpu", logs), start_worker(producer, "reader", logs, queues="ocr")]
    try:
        wait_ready(producer, ["gpu", "reader"])
        enqueue(producer, db, plan.run_id, plan.batches)
        wait_for(run_finished(db.url, plan.run_id), 180, "the run to finish", procs, logs)

        def both_read():
            with psycopg.connect(db.url) as conn:
                return conn.execute("SELECT count(*) FROM image_texts").fetchone()[0] == 2
        wait_for(both_read, 180, "the OCR worker to read both photos", procs, logs)
    finally:
        for proc in procs:
            stop_worker(proc)
    with psycopg.connect(db.url) as conn:
        texts = [r[0] for r in conn.execute("SELECT compact FROM image_texts ORDER BY compact")]
    assert texts[0] == "" and "密码hunter2024" in texts[1]
    # The embed worker sent the photos on and did not read them itself.
    assert "clipdex.read_texts[" not in (logs / "worker-gpu.log").read_text()
    assert "clipdex.read_texts[" in (logs / "worker-reader.log").read_text()
