"""The Flask app through its test client, on a real database with an indexed library."""

from __future__ import annotations

import io

import psycopg
import pytest

from tests import libraries as L
from webapp import create_app


@pytest.fixture(scope="module")
def app(library):
    settings, _db, _root = library
    return create_app(settings)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture(scope="module")
def ids(library):
    _settings, db, _root = library
    with psycopg.connect(db.url) as conn:
        return dict(conn.execute("SELECT relpath, image_id FROM locations").fetchall())


HEIC = "phone/DCIM/100APPLE/IMG_0001.HEIC"


def test_text_search_returns_results_with_everything_a_grid_needs(client):
    response = client.get("/api/search?q=a+sunny+beach&limit=5")
    assert response.status_code == 200
    body = response.get_json()
    assert len(body["results"]) == 5 and body["next_cursor"]
    hit = body["results"][0]
    assert set(hit) >= {"id", "score", "taken_at", "source", "sources", "width", "height", "thumbnail_url"}
    scores = [h["score"] for h in body["results"]]
    assert scores == sorted(scores, reverse=True)
    following = client.get(f"/api/search?cursor={body['next_cursor']}").get_json()
    assert not {h["id"] for h in following["results"]} & {h["id"] for h in body["results"]}


def test_filters_alone_browse_newest_first(client, ids, library):
    """No words and no example: the photos the filters keep, newest first, paged without repeats."""
    _settings, db, _root = library
    with psycopg.connect(db.url) as conn:
        expected = [r[0] for r in conn.execute(
            "SELECT DISTINCT i.id, i.taken_at FROM images i JOIN locations l ON l.image_id = i.id "
            "WHERE l.source = 'qq' ORDER BY i.taken_at DESC NULLS LAST, i.id DESC")]
        everything = conn.execute("SELECT count(*) FROM images").fetchone()[0]
    seen, body = [], client.get("/api/search?source=qq&limit=3").get_json()
    while True:
        assert body["strategy"] == "newest" and all(h["score"] is None for h in body["results"])
        seen += [h["id"] for h in body["results"]]
        if not body["next_cursor"]:
            break
        body = client.get(f"/api/search?cursor={body['next_cursor']}").get_json()
    assert seen == expected
    first = client.get("/api/search?limit=200").get_json()
    assert len(first["results"]) == everything and first["strategy"] == "newest"
    taken = [h["taken_at"] for h in first["results"] if h["taken_at"]]
    assert taken == sorted(taken, reverse=True)


def test_filters_and_json_body(client, ids):
    body = client.post("/api/search", json={"like": ids[HEIC], "source": ["iphone"], "format": "heif",
                                            "has_gps": True, "limit": 10}).get_json()
    assert [h["id"] for h in body["results"]] == [ids[HEIC]]
    body = client.get("/api/search?q=cat&source=qq&limit=50").get_json()
    assert body["results"] and all("qq" in h["sources"] for h in body["results"])


def test_upload_finds_the_same_picture_first(client, ids, library):
    _settings, _db, root = library
    data = (root / HEIC).read_bytes()
    response = client.post("/api/search", data={"image": (io.BytesIO(data), "query.heic"), "limit": "3"},
                           content_type="multipart/form-data")
    assert response.status_code == 200
    assert response.get_json()["results"][0]["id"] == ids[HEIC]


def test_combined_query_with_weights_and_negative_text(client, ids):
    response = client.get(f"/api/search?q=car&like={ids[HEIC]}^0.5&not=night^0.3&limit=4")
    assert response.status_code == 200 and len(response.get_json()["results"]) == 4


@pytest.mark.parametrize("url, status, words", [
    ("/api/search?not=night", 400, "not: give a text or an example image"),
    ("/api/search?q=car^x", 400, "expected a number after ^"),
    ("/api/search?q=car&cursor=abc", 400, "give it alone"),
    ("/api/search?q=x&colour=red", 400, "unknown filter 'colour'"),
    ("/api/search?q=x&taken_from=2023-13-45", 400, "expected a date"),
    ("/api/search?q=x&limit=1000", 400, "limit must be between 1 and 200"),
    ("/api/search?q=x&limit=ten", 400, "limit: expected a whole number"),
    ("/api/search?like=abc", 400, "like: expected an image id"),
    ("/api/search?like=999999999", 404, "image 999999999"),
    ("/api/search?like=99999999999999999999999", 404, "no image"),
    ("/api/search?cursor=garbage", 400, "cursor"),
    ("/api/search?q=x^0", 400, "weight"),
    ("/api/images/123456789", 404, "no image 123456789"),
    ("/api/images/99999999999999999999", 404, "no image"),
    ("/api/status/424242", 404, "no run 424242"),
    ("/api/nothing-here", 404, "nothing at this address"),
])
def test_bad_requests_get_a_message_and_no_trace(client, url, status, words):
    response = client.get(url)
    assert response.status_code == status
    body = response.get_json()
    assert words in body["error"]["message"] and body["error"]["status"] == status
    assert "Traceback" not in response.get_data(as_text=True)


def test_bad_uploads(client, app):
    text = client.post("/api/search", data={"image": (io.BytesIO(b"hello, not a picture"), "x.jpg")},
                       content_type="multipart/form-data")
    assert text.status_code == 400 and "not an image" in text.get_json()["error"]["message"]
    bomb = client.post("/api/search", data={"image": (io.BytesIO(L.bomb_png()), "bomb.png")},
                       content_type="multipart/form-data")
    assert bomb.status_code == 400 and "decompression bomb" in bomb.get_json()["error"]["message"]
    limit = app.config["CLIPDEX_SETTINGS"].upload_max_bytes
    huge = client.post("/api/search", data={"image": (io.BytesIO(b"\xff\xd8\xff" + b"0" * (limit + 10**6)), "big.jpg")},
                       content_type="multipart/form-data")
    assert huge.status_code == 413 and "larger than" in huge.get_json()["error"]["message"]
    json_nonsense = client.post("/api/search", data="[1, 2", content_type="application/json")
    assert json_nonsense.status_code == 400


def test_detail_api_lists_every_location_and_similar_images(client, ids):
    shared = "chat/Tencent Files/12345678/Image/C2C/D4439109D498DC8CA89FA94E2304C0C9"
    body = client.get(f"/api/images/{ids[shared]}").get_json()
    assert body["copies"] == 2 and {l["album"] for l in body["locations"]} == {"QQ private chats", "QQ group chats"}
    assert body["similar"] and ids[shared] not in [h["id"] for h in body["similar"]]


def test_thumbnails_are_cached_by_the_browser(client, ids):
    response = client.get(f"/thumbnails/{ids[HEIC]}.webp")
    assert response.status_code == 200 and response.mimetype == "image/webp"
    assert response.data[:4] == b"RIFF" and "immutable" in response.headers["Cache-Control"]
    again = client.get(f"/thumbnails/{ids[HEIC]}.webp", headers={"If-None-Match": response.headers["ETag"]})
    assert again.status_code == 304


def test_originals_only_by_image_id(client, ids, library):
    _settings, _db, root = library
    response = client.get(f"/images/{ids[HEIC]}/original?download=1")
    assert response.status_code == 200 and response.data == (root / HEIC).read_bytes()
    assert "attachment" in response.headers["Content-Disposition"]
    for attempt in ("/images/../../etc/passwd/original", "/images/1/original/../../../../etc/passwd",
                    "/original?path=/etc/passwd", "/images/%2e%2e%2fetc%2fpasswd/original"):
        assert client.get(attempt).status_code == 404


def test_pages_render(client, ids):
    page = client.get("/")
    assert page.status_code == 200 and b'id="search"' in page.data and b"photos indexed" in page.data
    detail = client.get(f"/images/{ids[HEIC]}")
    assert detail.status_code == 200 and b"IMG_0001.HEIC" in detail.data and b"Similar photos" in detail.data
    status = client.get("/status")
    assert status.status_code == 200 and b"Run " in status.data
    missing = client.get("/images/987654321")
    assert missing.status_code == 404 and b"no image 987654321" in missing.data


def test_status_api_matches_the_cli(client, library):
    runs = client.get("/api/status").get_json()["runs"]
    assert runs[0]["state"] == "done" and {s["source"] for s in runs[0]["sources"]} >= {"takeout", "iphone", "qq"}
    failures = client.get(f"/api/status/{runs[0]['id']}/failures").get_json()["failures"]
    assert [f["reason"] for f in failures] == ["named like an image but the content is an HTML page"]


def test_access_token(library):
    settings, _db, _root = library
    client = create_app(settings.replace(access_token="s3cret-token")).test_client()
    missing = client.get("/api/search?q=x")
    assert missing.status_code == 401 and "token is required" in missing.get_json()["error"]["message"]
    wrong = client.get("/api/search?q=x", headers={"Authorization": "Bearer wrong"})
    assert wrong.status_code == 401 and wrong.get_json()["error"]["message"] == "Wrong access token."
    assert client.get("/api/search?q=x", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
    assert client.get("/healthz").status_code == 200
    # The token never travels in an address (logs, history): ?token= is not a way in.
    assert client.get("/api/search?q=x&token=s3cret-token").status_code == 401
    page = client.get("/?q=car&token=s3cret-token")
    assert page.status_code == 303 and page.headers["Location"].startswith("/login?next=")
    # A browser signs in through a form; the cookie stands in for the token afterwards.
    form = client.get(page.headers["Location"])
    assert form.status_code == 200 and b'type="password"' in form.data
    refused = client.post("/login", data={"token": "nope", "next": "/?q=car"})
    assert refused.status_code == 401 and b"Wrong access token" in refused.data
    signed_in = client.post("/login", data={"token": "s3cret-token", "next": "/?q=car"})
    assert signed_in.status_code == 303 and signed_in.headers["Location"] == "/?q=car"
    assert "HttpOnly" in signed_in.headers["Set-Cookie"] and "SameSite=Strict" in signed_in.headers["Set-Cookie"]
    assert client.get("/").status_code == 200
    assert client.get("/api/search?q=x").status_code == 200
    # Only paths on this site are followed after signing in.
    for target in ("https://evil.example/", "//evil.example/x", "/\\evil.example"):
        away = create_app(settings.replace(access_token="s3cret-token")).test_client().post(
            "/login", data={"token": "s3cret-token", "next": target})
        assert away.headers["Location"] == "/"


def test_only_loopback_host_names_without_a_token(library):
    """DNS rebinding: a page on evil.example that points its name at 127.0.0.1 must not read photos."""
    settings, _db, _root = library
    client = create_app(settings).test_client()
    for host in ("localhost", "localhost:5000", "127.0.0.1:5000", "[::1]:5000", "photos.localhost"):
        assert client.get("/api/filters", headers={"Host": host}).status_code == 200, host
    for host in ("evil.example", "evil.example:5000", "127.0.0.1.evil.example", "192.168.1.20:5000"):
        response = client.get("/api/filters", headers={"Host": host})
        assert response.status_code == 421, host
        assert "CLIPDEX_WEB_HOSTNAMES" in response.get_json()["error"]["message"]
    named = create_app(settings.replace(web_hostnames=("photos.lan",))).test_client()
    assert named.get("/api/filters", headers={"Host": "Photos.LAN:5000"}).status_code == 200
    assert named.get("/api/filters", headers={"Host": "evil.example"}).status_code == 421
    # With a token, the token is the protection: any name (a LAN address, a domain) is fine.
    tokened = create_app(settings.replace(access_token="t0ken")).test_client()
    assert tokened.get("/api/filters", headers={"Host": "192.168.1.20:5000",
                                                "Authorization": "Bearer t0ken"}).status_code == 200


def test_security_headers(client):
    response = client.get("/")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]


def test_a_multipart_part_without_a_name_is_ignored(client):
    """Found by Schemathesis: a nameless part beside an unknown one made a 500."""
    body = (b"--b\r\nContent-Disposition: form-data\r\n\r\nx\r\n"
            b"--b\r\nContent-Disposition: form-data; name=\"zz\"\r\n\r\ny\r\n--b--\r\n")
    response = client.post("/api/search?q=car", data=body, content_type="multipart/form-data; boundary=b")
    assert response.status_code == 400 and "unknown filter 'zz'" in response.get_json()["error"]["message"]


def test_a_running_run_shows_its_progress(settings, db, tmp_path):
    """The status page: a progress bar with the rate and the time left while a run goes, the same
    columns as `clipdex status`, no rows of zeros for sources the run did not see, and the run's
    failures one link away."""
    from indexer.batch import process_batch
    from indexer.producer import plan_run
    from indexer.runtime import Runtime
    from indexer import store

    for i in range(30):
        L.write(tmp_path / "lib" / f"p{i:02}.png", L.png(2000 + i))
    L.write(tmp_path / "lib" / "bad.jpg", "not a picture")
    settings = settings.replace(task_files=10)
    plan = plan_run(settings, db, tmp_path / "lib")
    with db.transaction() as conn:
        store.mark_enqueued(conn, plan.run_id)
    rt = Runtime(settings, db)
    try:
        process_batch(rt, plan.run_id, 1)           # one batch of four done: the run is under way
    finally:
        rt.close()
    page = create_app(settings).test_client().get("/status").get_data(as_text=True)
    assert 'class="badge state-running"' in page and "<progress" in page and "left" in page
    assert "files/s" in page and "new images/s" in page
    for column in ("seen", "unchanged", "skipped", "failed before", "queued", "done", "new", "duplicates",
                   "not images", "failed", "gone"):
        assert f"<th>{column}</th>" in page
    assert page.count("<tr><td>") == 1                     # one source seen: one row
    run = create_app(settings).test_client().get(f"/status/{plan.run_id}")
    assert run.status_code == 200 and "Failures" in run.get_data(as_text=True)


def test_the_filter_panel_offers_exactly_what_the_library_holds(client, library):
    """Each list against a plain query of its own (the panel reads the photos in one pass)."""
    _settings, db, _root = library
    body = client.get("/api/filters").get_json()
    with psycopg.connect(db.url) as conn:
        def column(sql: str) -> list:
            return [r[0] for r in conn.execute(sql)]

        assert body["sources"] == column("SELECT DISTINCT source FROM locations ORDER BY 1")
        assert body["formats"] == column("SELECT DISTINCT format FROM images ORDER BY 1")
        for key, name in (("camera_makes", "camera_make"), ("camera_models", "camera_model")):
            assert body[key] == column(f"SELECT {name} FROM images WHERE {name} IS NOT NULL "
                                       f"GROUP BY 1 ORDER BY count(*) DESC, {name} COLLATE \"C\"")
        assert body["images"] == conn.execute("SELECT count(*) FROM images").fetchone()[0]
        first, last = conn.execute("SELECT min(taken_at), max(taken_at) FROM images").fetchone()
    assert (body["taken_from"], body["taken_to"]) == (first.date().isoformat(), last.date().isoformat())
    assert len(body["sources"]) == 3 and len(body["formats"]) >= 3 and body["camera_makes"]
