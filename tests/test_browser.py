"""End to end in a real browser: Debian's chromium, driven by Playwright, against `clipdex serve`."""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import sys
import time

import psycopg
import pytest

pytestmark = pytest.mark.browser
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(library, tmp_path_factory):
    settings, _db, _root = library
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = settings.replace(web_port=port).child_environ()
    proc = subprocess.Popen([sys.executable, "-m", "clipdex.cli", "serve", "--threads", "4"], env=env,
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if proc.poll() is not None:
                raise AssertionError(log.read_text())
            time.sleep(0.2)
    yield base
    os.killpg(proc.pid, 15)
    proc.wait(timeout=20)


@pytest.fixture(scope="module")
def browser():
    if not shutil.which(CHROMIUM):
        pytest.fail("Debian's chromium is not installed (./bootstrap test installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        instance = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


def new_page(browser, height: int):
    # The app's Content-Security-Policy forbids eval; Playwright's waits evaluate strings.
    return browser.new_context(bypass_csp=True, viewport={"width": 1280, "height": height}).new_page()


def loaded_thumbnails(page) -> int:
    return page.evaluate("[...document.querySelectorAll('.tile img')].filter(i => i.complete && i.naturalWidth > 0).length")


def test_search_filter_drop_and_detail(server, browser, library, tmp_path):
    settings, db, root = library
    with psycopg.connect(db.url) as conn:
        ids = dict(conn.execute("SELECT relpath, image_id FROM locations").fetchall())
        qq_images = conn.execute("SELECT count(DISTINCT image_id) FROM locations WHERE source = 'qq'").fetchone()[0]
    page = new_page(browser, 900)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    # Type a query: thumbnails appear.
    page.goto(server + "/")
    page.fill("#q", "a sunny beach")
    page.press("#q", "Enter")
    page.wait_for_function("document.querySelectorAll('.tile img').length > 0")
    page.wait_for_function("[...document.querySelectorAll('.tile img')].every(i => i.complete)")
    assert loaded_thumbnails(page) >= 20
    assert "q=a+sunny+beach" in page.url
    page.screenshot(path=str(tmp_path / "search.png"), full_page=True)

    # Apply a filter: only QQ photos remain.
    page.click("#filters summary")
    page.check("input[name=source][value=qq]")
    page.wait_for_function(f"document.querySelectorAll('.tile').length === {qq_images}")
    hrefs = page.eval_on_selector_all(".tile", "tiles => tiles.map(t => t.getAttribute('href'))")
    qq_ids = {v for k, v in ids.items() if k.startswith("chat/")}
    assert {int(h.rsplit("/", 1)[1]) for h in hrefs} == qq_ids
    page.uncheck("input[name=source][value=qq]")

    # Drop an image on the page: the same photo comes back first.
    photo = root / "phone/DCIM/100APPLE/IMG_0002.JPG"
    page.fill("#q", "")
    data = base64.b64encode(photo.read_bytes()).decode()
    transfer = page.evaluate_handle(
        """data => { const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
                     const t = new DataTransfer();
                     t.items.add(new File([bytes], 'dropped.jpg', {type: 'image/jpeg'}));
                     return t; }""", data)
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
    page.wait_for_selector(".chip")
    page.wait_for_function(
        f"document.querySelector('.tile') && document.querySelector('.tile').getAttribute('href') === "
        f"'/images/{ids['phone/DCIM/100APPLE/IMG_0002.JPG']}'")

    # The file chooser works the same way.
    page.click(".chip button")
    page.set_input_files("#image", str(root / "phone/DCIM/105APPLE/IMG_0001.JPG"))
    page.wait_for_function(
        f"document.querySelector('.tile').getAttribute('href') === '/images/{ids['phone/DCIM/105APPLE/IMG_0001.JPG']}'")

    # Open a detail page from the grid.
    page.click(".tile >> nth=0")
    page.wait_for_url("**/images/*")
    assert page.inner_text("h1").startswith("Photo ")
    assert "105APPLE/IMG_0001.JPG" in page.inner_text(".locations")
    assert page.locator(".results .tile").count() > 0
    page.screenshot(path=str(tmp_path / "detail.png"), full_page=True)

    # An empty search explains itself.
    page.goto(server + "/")
    page.click("button[type=submit]")
    assert "Type some words" in page.inner_text("#message")
    assert errors == []
    assert (tmp_path / "search.png").stat().st_size > 10_000


def test_infinite_scroll_loads_the_next_page(server, browser, library):
    _settings, db, _root = library
    with psycopg.connect(db.url) as conn:
        images = conn.execute("SELECT count(*) FROM images").fetchone()[0]
    page = new_page(browser, 500)
    page.goto(server + "/?q=blue+sky&limit=8")        # small pages, to scroll through several
    page.wait_for_function("document.querySelectorAll('.tile').length === 8")
    for _ in range(images):
        if page.evaluate("document.querySelectorAll('.tile').length") == images:
            break
        page.mouse.wheel(0, 5000)
        page.wait_for_timeout(100)
    hrefs = page.eval_on_selector_all(".tile", "tiles => tiles.map(t => t.getAttribute('href'))")
    assert len(hrefs) == len(set(hrefs)) == images
    assert page.is_hidden("#more")


def test_every_surface_gives_the_same_answer(server, browser, library):
    """One request through the four ways in: `clipdex search`, the JSON API, the search page and
    psql. The first three call the same search service; psql ranks with the same SQL operator."""
    import json
    import urllib.parse
    import urllib.request

    from clipdex import embedded_postgres
    from tests.conftest import run_cli

    settings, db, _root = library
    text, params = "a dog on a beach", {"format": "jpeg", "orientation": "landscape"}
    cli_lines = run_cli("search", text, *[a for k, v in params.items() for a in ("-f", f"{k}={v}")],
                        "--limit", "6", "--json", env=settings.to_environ()).stdout.splitlines()
    from_cli = [json.loads(line)["id"] for line in cli_lines[:-1]]
    query = urllib.parse.urlencode({"q": text, **params, "limit": 6})
    with urllib.request.urlopen(f"{server}/api/search?{query}", timeout=60) as response:
        from_api = [hit["id"] for hit in json.loads(response.read())["results"]]
    page = new_page(browser, 900)
    page.goto(f"{server}/?{query}")
    page.wait_for_function("document.querySelectorAll('.tile').length > 0")
    hrefs = page.eval_on_selector_all(".tile", "tiles => tiles.map(t => t.getAttribute('href'))")
    from_page = [int(h.rsplit("/", 1)[1]) for h in hrefs][:6]
    sql = ("SELECT p.id FROM vectors v JOIN photos p USING (id) "
           "WHERE p.format = 'jpeg' AND p.orientation = 'landscape' "
           f"ORDER BY v.embedding <=> text_embedding('{text}'), p.id LIMIT 6")
    psql = subprocess.run([str(embedded_postgres.psql_path()), db.url, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                           "-c", sql], capture_output=True, text=True, check=True)
    from_psql = [int(line) for line in psql.stdout.split()]
    assert len(from_cli) == 6
    assert from_cli == from_api == from_page == from_psql
