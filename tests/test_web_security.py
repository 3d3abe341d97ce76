"""The web app holds private photos: loopback by default, a token elsewhere, hostile input answered
with 4xx (never a 5xx or a trace), uploads kept in memory, and a read-only database role enough."""

from __future__ import annotations

import io
import json
import os

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from tests import libraries as L
from tests.conftest import read_only_role, run_cli
from webapp import create_app
from webapp.security import InMemoryUploadRequest
from webapp.server import Refused, check_exposure, is_loopback


@pytest.fixture(scope="module")
def app(library):
    settings, _db, _root = library
    return create_app(settings)


def test_public_address_needs_a_token(library):
    settings, _db, _root = library
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and not is_loopback("0.0.0.0")
    check_exposure(settings)                                        # 127.0.0.1 by default
    with pytest.raises(Refused, match="without an access token"):
        check_exposure(settings.replace(web_host="0.0.0.0"))
    check_exposure(settings.replace(web_host="0.0.0.0", access_token="a-long-random-token"))
    proc = run_cli("serve", "--host", "0.0.0.0", env=settings.to_environ(), check=False, timeout=60)
    assert proc.returncode == 1 and "refusing to serve your photos on 0.0.0.0" in proc.stderr


def test_uploads_stay_in_memory(app):
    request = InMemoryUploadRequest.from_values("/")
    assert isinstance(request._get_file_stream(10_000_000, "image/jpeg", "x.jpg"), io.BytesIO)
    assert app.request_class is InMemoryUploadRequest


HOSTILE = st.one_of(
    st.text(max_size=60),
    st.text(max_size=20).map(lambda t: t + "\x00" + t),          # NUL anywhere
    st.sampled_from(["9999-12-31", "0001-01-01", "9999-12-31T23:59:59-12:00", "0001-01-01T00:00:00+14:00",
                     "10000-01-01", "-0001-01-01", "2023-06-01T25:00", "9999-12-31T23:59:59.999999+00:00"]),
    st.sampled_from(["' OR 1=1 --", "'; DROP TABLE images; --", "../../etc/passwd", "%00", "\x00", "NaN",
                     "-1", "1e309", "99999999999999999999999999", "2023-02-30", "null", "[]", "{}", "^",
                     "x^1e400", "a^-0", "true", "¹", "٣", "7^²", "٣^٣", "9223372036854775808", "", " ", "🦄" * 50, "\ud800".encode("utf-8", "surrogatepass")
                     .decode("utf-8", "replace")]),
)
NAMES = st.sampled_from(["q", "not", "like", "limit", "cursor", "taken_from", "taken_to", "source", "album",
                         "min_width", "min_height", "orientation", "format", "camera_make", "camera_model",
                         "has_gps", "bbox", "favorite", "path", "token", "zzz", "q[]"])


def assert_clean(response) -> None:
    body = response.get_data(as_text=True)
    assert response.status_code < 500, body
    assert "Traceback" not in body and "psycopg" not in body and "File \"" not in body


@hsettings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(NAMES, HOSTILE), max_size=6), st.sampled_from(["GET", "POST", "JSON"]))
def test_fuzzed_searches_never_fail_on_the_server(app, params, method):
    client = app.test_client()
    if method == "GET":
        response = client.get("/api/search", query_string=params)
    elif method == "POST":
        from werkzeug.datastructures import MultiDict

        response = client.post("/api/search", data=MultiDict(params))
    else:
        body: dict = {}
        for name, value in params:
            body.setdefault(name, []).append(value)
        response = client.post("/api/search", data=json.dumps(body), content_type="application/json")
    assert_clean(response)


@hsettings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=80))
def test_fuzzed_paths_never_fail_on_the_server(app, tail):
    from urllib.parse import quote

    client = app.test_client()
    for prefix in ("/api/images/", "/images/", "/thumbnails/", "/api/status/", "/"):
        assert_clean(client.get(prefix + quote(tail, safe="/.")))
        assert_clean(client.get(prefix + quote(tail, safe="")))


@pytest.mark.parametrize("like, status", [("¹", 400), ("²^2", 400), ("٣", 400), ("12a", 400), ("-4", 400),
                                          ("^2", 400), ("1^0", 400), ("9223372036854775808", 404),
                                          ("1" * 5000, 404)])
def test_a_bad_image_id_is_a_client_error(app, like, status):
    """Found by Schemathesis: '¹'.isdigit() is true but int('¹') raises, which once gave a 500.
    A 5,000-digit id would also make int() raise (Python refuses over 4,300 digits)."""
    client = app.test_client()
    for response in (client.get("/api/search", query_string={"like": like}),
                     client.post("/api/search", data={"like": like}),
                     client.post("/api/search", json={"like": [like]})):
        assert response.status_code == status, (like, response.get_data(as_text=True))
        assert_clean(response)
        message = response.get_json()["error"]["message"]
        assert ("no image" if status == 404 else "like" if like != "1^0" else "weight") in message


NUL_FIELDS = ["q", "not", "album", "camera_make", "camera_model", "path", "source", "taken_from", "like", "limit"]


@pytest.mark.parametrize("name", NUL_FIELDS)
def test_a_nul_in_any_field_is_a_client_error(app, name):
    """Once a 500: PostgreSQL text cannot hold NUL, and psycopg refused the parameter."""
    client = app.test_client()
    value = "red\x00car"
    for response in (client.get("/api/search", query_string={"q": "car", name: value}),
                     client.post("/api/search", data={"q": "car", name: value}),
                     client.post("/api/search", json={"q": "car", name: [value]})):
        assert response.status_code == 400, response.get_data(as_text=True)
        assert "NUL" in response.get_json()["error"]["message"]
    lone = client.post("/api/search", data=b'{"q": "\\ud800 car"}', content_type="application/json")
    assert lone.status_code == 400 and "not valid Unicode" in lone.get_json()["error"]["message"]


@pytest.mark.parametrize("params, status", [
    ({"taken_to": "9999-12-31"}, 200), ({"taken_from": "0001-01-01"}, 200),
    ({"taken_from": "0001-01-01T00:00:00+14:00"}, 400), ({"taken_to": "9999-12-31T23:59:59-12:00"}, 400),
])
def test_extreme_dates(app, library, params, status):
    """Once a 500 (OverflowError), and a traceback from the CLI."""
    response = app.test_client().get("/api/search", query_string={"q": "car", **params})
    assert response.status_code == status, response.get_data(as_text=True)
    if status == 400:
        assert "years 1 to 9999" in response.get_json()["error"]["message"]
    settings, _db, _root = library
    name, value = next(iter(params.items()))
    proc = run_cli("search", "car", "-f", f"{name}={value}", env=settings.to_environ(), check=False)
    assert "Traceback" not in proc.stderr and proc.returncode == (0 if status == 200 else 2)


def test_deeply_nested_json_is_a_client_error(app):
    client = app.test_client()
    for body in ("[" * 100_000 + "]" * 100_000, '{"q": ' + "[" * 100_000 + "]" * 100_000 + "}"):
        response = client.post("/api/search", data=body, content_type="application/json")
        assert response.status_code == 400, response.status_code
        assert_clean(response)


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(min_size=0, max_size=160), st.floats(allow_nan=True, allow_infinity=True),
       st.integers(min_value=-2**70, max_value=2**70), st.integers(min_value=-5, max_value=500))
def test_fuzzed_cursors_never_fail_on_the_server(app, vector, distance, image_id, limit):
    """Cursors carry their vector: zeros, NaN, huge or wrong-sized ones must be refused (a zero
    vector once came back as "score": NaN, which is not JSON)."""
    import base64

    payload = json.dumps({"v": base64.urlsafe_b64encode(vector[: len(vector) // 2 * 2]).decode(),
                          "f": {}, "k": limit, "d": distance, "i": image_id})
    cursor = base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")
    response = app.test_client().get("/api/search", query_string={"cursor": cursor})
    assert_clean(response)
    json.loads(response.get_data(as_text=True))      # strict JSON: no NaN


def test_too_many_form_parts_says_so(app):
    fields = [("album", str(i)) for i in range(1500)]
    from werkzeug.datastructures import MultiDict

    response = app.test_client().post("/api/search", data=MultiDict([("q", "x"), *fields]),
                                      content_type="multipart/form-data")
    assert response.status_code == 413
    message = response.get_json()["error"]["message"]
    assert "too many parts" in message and "MiB" not in message


def test_schemathesis_finds_no_server_error(app):
    import schemathesis
    from hypothesis import settings as hyp_settings

    schema = schemathesis.openapi.from_wsgi("/api/openapi.json", app)
    failures = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @hyp_settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def call(case):
            response = case.call()
            if response.status_code >= 500 or b"Traceback" in response.content:
                failures.append((operation.label, response.status_code, response.content[:200]))

        call()
    assert failures == []


def test_a_read_only_role_can_search_and_page(library, pg_url):
    settings, db, _root = library
    with read_only_role(db.url) as reader_url:
        client = create_app(settings.replace(database_url=reader_url)).test_client()
        page = client.get("/api/search?q=a+never+cached+sentence&limit=5")
        assert page.status_code == 200 and len(page.get_json()["results"]) == 5
        following = client.get("/api/search?cursor=" + page.get_json()["next_cursor"])
        assert following.status_code == 200 and following.get_json()["results"]
        first = page.get_json()["results"][0]["id"]
        assert client.get(f"/thumbnails/{first}.webp").status_code == 200
        assert client.get(f"/api/images/{first}").status_code == 200
        with psycopg.connect(reader_url) as conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("DELETE FROM images")


def test_originals_are_served_only_from_the_file_that_was_indexed(settings, db, tmp_path):
    """Once: a symlink swapped in (to a secret padded to the same size, `touch -r`'d) was served as
    image/png. Now the path must resolve inside its root to a regular file with the size, time and
    inode that were indexed, and (being small) hash to the image's SHA-256."""
    from indexer.in_process import index_folder

    root = tmp_path / "lib"
    names = ["keep.png", "link.png", "same-size.png", "moved.png", "fifo.png"]
    for seed, name in enumerate(names):
        L.write(root / name, L.png(1200 + seed))
    index_folder(settings, db, root, out=None)
    with psycopg.connect(db.url) as conn:
        ids = dict(conn.execute("SELECT relpath, image_id FROM locations").fetchall())
    secret = tmp_path / "secret.txt"

    def impostor(name: str) -> bytes:
        original = root / name
        data = b"TOP SECRET".ljust(original.stat().st_size, b" ")
        return data

    # A link to a secret outside the library, same size and time.
    secret.write_bytes(impostor("link.png"))
    stat = (root / "link.png").stat()
    os.utime(secret, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    (root / "link.png").unlink()
    os.symlink(secret, root / "link.png")
    # Other content, same size and time, same inode (written in place).
    stat = (root / "same-size.png").stat()
    with open(root / "same-size.png", "r+b") as handle:
        handle.write(impostor("same-size.png"))
    os.utime(root / "same-size.png", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    # The same bytes put back as a new file (another inode).
    data, stat = (root / "moved.png").read_bytes(), (root / "moved.png").stat()
    (root / "moved.new").write_bytes(data)
    os.utime(root / "moved.new", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(root / "moved.new", root / "moved.png")
    assert (root / "moved.png").stat().st_ino != stat.st_ino
    # A named pipe: must not hang the server.
    (root / "fifo.png").unlink()
    os.mkfifo(root / "fifo.png")

    client = create_app(settings).test_client()
    kept = client.get(f"/images/{ids['keep.png']}/original")
    assert kept.status_code == 200 and kept.data == (root / "keep.png").read_bytes()
    for name in ("link.png", "same-size.png", "moved.png", "fifo.png"):
        response = client.get(f"/images/{ids[name]}/original")
        assert response.status_code == 409, (name, response.status_code)
        assert b"SECRET" not in response.data
        assert b"changed since it was indexed" in response.data
        preview = client.get(f"/images/{ids[name]}/preview")
        assert preview.status_code == 302 and preview.headers["Location"].endswith(".webp")
    (root / "keep.png").unlink()
    assert client.get(f"/images/{ids['keep.png']}/original").status_code == 404
    # Indexing again makes the rewritten copies servable (they are read, hashed and recorded anew).
    (root / "fifo.png").unlink()
    index_folder(settings, db, root, out=None)
    assert client.get(f"/images/{ids['moved.png']}/original").status_code == 200


def test_parallel_uploads_share_one_decode_budget(library):
    """Once: sixteen parallel uploads of a small PNG that decodes to 100 MP raised the server's
    memory by 3 GB. Uploads now decode within the process's budget, one at a time when large."""
    from concurrent.futures import ThreadPoolExecutor

    from clipdex.imaging import decoded_bytes
    from PIL import Image

    flat = io.BytesIO()
    Image.new("RGB", (4000, 2500), (40, 90, 160)).save(flat, "PNG")             # 10 MP in 30 KB
    with Image.open(io.BytesIO(flat.getvalue())) as probe:
        need = decoded_bytes(probe)
    settings, _db, _root = library
    app = create_app(settings.replace(decode_memory=int(need * 1.5)))
    budget = app.extensions["clipdex"].decode_budget

    def upload(_):
        return app.test_client().post("/api/search", data={"image": (io.BytesIO(flat.getvalue()), "x.png"),
                                                           "limit": "3"}, content_type="multipart/form-data")

    with ThreadPoolExecutor(8) as pool:
        statuses = [r.status_code for r in pool.map(upload, range(8))]
    assert statuses == [200] * 8
    assert need <= budget.peak <= budget.limit < 2 * need and budget.used == 0
