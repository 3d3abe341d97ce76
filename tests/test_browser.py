"""End to end in a real browser: Debian's chromium, driven by Playwright, against `clipdex serve`."""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

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
    with serving(settings, tmp_path_factory.mktemp("serve") / "serve.log") as base:
        yield base


@contextmanager
def serving(settings, log: Path):
    """`clipdex serve` as a real process on a free port; yields its base address."""
    port = free_port()
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
    try:
        yield base
    finally:
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


def new_page(browser, height: int, width: int = 1280, mobile: bool = False):
    # The app's Content-Security-Policy forbids eval; Playwright's waits evaluate strings.
    return browser.new_context(bypass_csp=True, viewport={"width": width, "height": height}, is_mobile=mobile,
                               has_touch=mobile, device_scale_factor=2 if mobile else 1).new_page()


def phone_page(browser):
    """A 390×844 phone screen."""
    return new_page(browser, 844, 390, mobile=True)


def no_horizontal_overflow(page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")


def tiles_per_row(page) -> int:
    return page.evaluate("""() => { const tiles = [...document.querySelectorAll('.results .tile')];
        if (!tiles.length) return 0; const top = tiles[0].getBoundingClientRect().top;
        return tiles.filter(t => Math.abs(t.getBoundingClientRect().top - top) < 2).length; }""")


def shot(page, folder, name: str) -> None:
    """A screenshot of the state under test; a blank page would be a few kB."""
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 8_000, name


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
    page.wait_for_function("location.search.includes('q=a+sunny+beach') && document.getElementById('message')"
                           ".textContent.includes('best match first')")
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
    assert page.inner_text("h1") == "IMG_0001.JPG"          # the file name is the title
    assert "105APPLE/IMG_0001.JPG" in page.inner_text(".locations")
    assert page.locator(".results .tile").count() > 0
    page.screenshot(path=str(tmp_path / "detail.png"), full_page=True)

    # An empty search box lists the photos, newest first.
    page.goto(server + "/")
    page.wait_for_function("document.querySelectorAll('.tile').length > 0")
    assert "newest first" in page.inner_text("#message")
    assert errors == []
    assert (tmp_path / "search.png").stat().st_size > 10_000


def test_infinite_scroll_loads_the_next_page(server, browser, library):
    _settings, db, _root = library
    with psycopg.connect(db.url) as conn:
        images = conn.execute("SELECT count(*) FROM images").fetchone()[0]
    page = new_page(browser, 500)
    page.goto(server + "/?q=blue+sky&limit=8")        # small pages, to scroll through several
    page.wait_for_function("document.querySelectorAll('.tile').length >= 8")
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


def _ids(library) -> dict[str, int]:
    _settings, db, _root = library
    with psycopg.connect(db.url) as conn:
        return dict(conn.execute("SELECT relpath, image_id FROM locations").fetchall())


def test_a_drop_adds_one_image_and_one_search(server, browser, library, tmp_path):
    """Once: a dropped image was added twice (two handlers on the bubbled drop event: two POSTs)."""
    _settings, _db, root = library
    page = new_page(browser, 900)
    page.goto(server + "/?q=beach")
    page.wait_for_function("document.querySelectorAll('.tile').length > 0")
    posts: list[str] = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" and "/api/search" in r.url else None)
    photo = root / "phone/DCIM/100APPLE/IMG_0002.JPG"
    transfer = page.evaluate_handle(
        """data => { const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
                     const t = new DataTransfer(); t.items.add(new File([bytes], 'd.jpg', {type: 'image/jpeg'}));
                     return t; }""", base64.b64encode(photo.read_bytes()).decode())
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
    page.wait_for_function("location.search.includes('like=')")
    page.wait_for_timeout(300)
    assert len(posts) == 1 and page.locator(".chip").count() == 1
    shot(page, tmp_path, "dropped")


def test_the_address_is_the_state(server, browser, library, tmp_path):
    """A reload or a shared link restores words, filters and example images; the page size alone
    does not open the filters; an uploaded image that is not in the library survives a reload."""
    from PIL import Image

    page = new_page(browser, 900)
    page.goto(server + "/?q=a+red+car&limit=12")
    page.wait_for_function("document.querySelectorAll('.tile').length >= 12")
    assert page.evaluate("document.getElementById('filters').open") is False
    page.goto(server + "/?q=a+red+car&source=qq")
    page.wait_for_function("document.querySelectorAll('.tile').length > 0")
    assert page.evaluate("document.getElementById('filters').open") is True
    assert page.is_checked("input[name=source][value=qq]")
    # A picture the library does not hold: kept by the server under a key that the address names.
    stranger = tmp_path / "stranger.png"
    Image.new("RGB", (64, 48), (200, 40, 90)).save(stranger)
    page.goto(server + "/")
    page.wait_for_function("document.querySelectorAll('.tile').length > 0")
    page.set_input_files("#image", str(stranger))
    page.wait_for_function("location.search.includes('upload=')")
    first = page.eval_on_selector_all(".tile", "ts => ts.map(t => t.dataset.id)")
    page.reload()
    page.wait_for_function("document.querySelectorAll('.tile').length > 0")
    assert page.locator(".chip").count() == 1
    assert page.eval_on_selector_all(".tile", "ts => ts.map(t => t.dataset.id)") == first
    shot(page, tmp_path, "upload-after-reload")


def test_back_from_a_photo_returns_to_the_same_tile(server, browser, library, tmp_path):
    page = new_page(browser, 500)
    page.goto(server + "/?q=blue+sky&limit=8")
    page.wait_for_function("document.querySelectorAll('.tile').length >= 8")
    for _ in range(40):                             # scroll down through every page
        if page.is_hidden("#more"):
            break
        page.mouse.wheel(0, 5000)
        page.wait_for_timeout(150)
    page.wait_for_timeout(300)
    count = page.evaluate("document.querySelectorAll('.tile').length")
    assert count > 8
    target = page.locator(".tile").nth(count - 2)
    clicked = target.get_attribute("data-id")
    target.click()
    page.wait_for_url("**/images/*")
    page.go_back()
    page.wait_for_function(f"document.querySelectorAll('.tile').length === {count}")
    assert page.evaluate("document.activeElement.dataset.id") == clicked
    assert page.evaluate("window.scrollY") > 100
    box = page.locator(f".tile[data-id='{clicked}']").bounding_box()
    assert 0 <= box["y"] < 500
    shot(page, tmp_path, "back")


def test_the_grid_is_one_tab_stop_and_arrows_move(server, browser, library, tmp_path):
    page = new_page(browser, 900)
    page.goto(server + "/?q=a+dog")
    page.wait_for_function("document.querySelectorAll('.tile').length > 4")
    assert page.evaluate("[...document.querySelectorAll('.tile')].filter(t => t.tabIndex === 0).length") == 1
    assert page.evaluate("document.querySelectorAll('.tile button, a button').length") == 0   # no button inside a link
    page.focus(".tile >> nth=0")
    ids = page.eval_on_selector_all(".tile", "ts => ts.map(t => t.dataset.id)")
    page.keyboard.press("ArrowRight")
    assert page.evaluate("document.activeElement.dataset.id") == ids[1]
    page.keyboard.press("Tab")                      # leaves the grid, not to the next tile
    assert page.evaluate("document.activeElement.classList.contains('tile')") is False
    page.focus(".tile >> nth=1")
    page.keyboard.press("m")                        # more like this photo
    page.wait_for_function(f"location.search.includes('like={ids[1]}')")
    assert page.input_value("#q") == ""
    page.wait_for_function("document.querySelectorAll('.tile').length > 0")
    page.focus(".tile >> nth=0")
    page.keyboard.press("Enter")
    page.wait_for_url("**/images/*")
    shot(page, tmp_path, "keyboard-opened")


def test_a_photo_page_speaks_plainly_and_steps_through_results(server, browser, library, tmp_path):
    ids = _ids(library)
    beach = "export/takeout-20240712T112341Z-001/Takeout/Google Photos/Photos from 2023/IMG_1234.JPG"
    page = new_page(browser, 900)
    page.goto(server + f"/images/{ids[beach]}")
    assert page.inner_text("h1") == "IMG_1234.JPG"
    taken = page.inner_text("tr:has(th:text('Taken')) td")
    assert taken.startswith("29 Jul 2023, 04:45 (UTC+9)")
    assert page.eval_on_selector_all(".people li", "lis => lis.map(l => l.textContent)") == ["Susan", "Justin"]
    place = page.inner_text("tr:has(th:text('Place')) td")
    assert place.startswith("near ") and "(FR)" in place
    assert "openstreetmap.org" in page.get_attribute("tr:has(th:text('Place')) a", "href")
    assert page.get_attribute(".preview a", "href") == f"/images/{ids[beach]}/original"
    assert "['" not in page.inner_text(".facts")
    shot(page, tmp_path, "detail")
    # Opened from a grid: ← and → walk through it, Esc goes back to it.
    page.goto(server + "/?q=a+dog&limit=5")
    page.wait_for_function("document.querySelectorAll('.tile').length >= 5")   # more pages may follow
    page.wait_for_timeout(300)
    order = page.eval_on_selector_all(".tile", "ts => ts.map(t => t.dataset.id)")
    page.click(".tile >> nth=1")
    page.wait_for_url(f"**/images/{order[1]}")
    page.keyboard.press("ArrowRight")
    page.wait_for_url(f"**/images/{order[2]}")
    page.keyboard.press("ArrowLeft")
    page.wait_for_url(f"**/images/{order[1]}")
    page.keyboard.press("Escape")
    page.wait_for_url("**/?q=a+dog&limit=5")
    page.wait_for_function("document.querySelectorAll('.tile').length >= 5")


def test_a_bad_filter_names_its_field(server, browser, library, tmp_path):
    page = new_page(browser, 900)
    page.goto(server + "/?q=car&min_width=-3")
    page.wait_for_function("document.getElementById('message').classList.contains('error')")
    assert page.inner_text("#message").startswith("Min width: must be between 1 and")
    assert page.get_attribute("input[name=min_width]", "aria-invalid") == "true"
    assert page.evaluate("document.getElementById('filters').open") is True
    shot(page, tmp_path, "field-error")


def test_the_phone_layout(server, browser, library, tmp_path):
    ids = _ids(library)
    page = phone_page(browser)
    page.goto(server + "/?q=a+sunny+beach")
    page.wait_for_function("document.querySelectorAll('.tile').length > 6")
    assert 2 <= tiles_per_row(page) <= 3 and no_horizontal_overflow(page)
    header = page.locator("header.top").bounding_box()
    assert header["width"] >= 389
    shot(page, tmp_path, "phone-search")
    for path in ("/status", f"/images/{ids['phone/DCIM/100APPLE/IMG_0001.HEIC']}", "/status/1"):
        page.goto(server + path)
        page.wait_for_load_state("networkidle")
        assert no_horizontal_overflow(page), path
        shot(page, tmp_path, "phone" + path.replace("/", "-"))
