"""The web app holds private photos: loopback by default, a token elsewhere, hostile input answered
with 4xx (never a 5xx or a trace), uploads kept in memory, and a read-only database role enough."""

from __future__ import annotations

import io
import json

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from tests.conftest import run_cli
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
    with psycopg.connect(db.url, autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS clipdex_reader_test")
        conn.execute("CREATE ROLE clipdex_reader_test LOGIN")
        conn.execute("GRANT USAGE ON SCHEMA public TO clipdex_reader_test")
        conn.execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO clipdex_reader_test")
    try:
        reader_url = db.url.replace("postgresql://postgres:@", "postgresql://clipdex_reader_test:@")
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
    finally:
        with psycopg.connect(db.url, autocommit=True) as conn:
            conn.execute("REVOKE ALL ON ALL TABLES IN SCHEMA public FROM clipdex_reader_test")
            conn.execute("REVOKE ALL ON SCHEMA public FROM clipdex_reader_test")
            conn.execute("DROP ROLE clipdex_reader_test")
