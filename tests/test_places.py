"""Where and with whom: places named offline from GPS (town, region, country in English and
Chinese), the `place` and `person` filters, place names found by a query's words, and the facets
of a search, checked against independent SQL counts. A real `clipdex index` of a small library:
photos with EXIF GPS in Kyoto, Osaka and Paris, a Takeout photo naming its people."""

from __future__ import annotations

import hashlib
import json

import psycopg
import pytest

from tests import libraries as L
from tests.conftest import run_cli
from tests.test_browser import browser  # noqa: F401  (the module's Playwright browser fixture)

KYOTO = ("N", (35.0, 0.0, 41.0), "E", (135.0, 46.0, 5.0))
OSAKA = ("N", (34.0, 41.0, 37.0), "E", (135.0, 30.0, 8.0))
PARIS = ("N", (48.0, 51.0, 24.0), "E", (2.0, 21.0, 8.0))


@pytest.fixture(scope="module")
def placed(pg_url, template_url, tiny_model_dir, tmp_path_factory):
    from clipdex.config import Settings
    from tests.conftest import fresh_database

    tmp = tmp_path_factory.mktemp("places")
    root = tmp / "lib"
    for n, gps in enumerate([KYOTO, KYOTO, OSAKA, PARIS]):
        L.write(root / "trip" / f"IMG_{n}.JPG", L.jpeg(700 + n, gps=gps, make="Canon",
                                                      taken=f"202{n}:05:01 10:00:00"))
    L.write(root / "trip" / "no_gps.jpg", L.jpeg(710, make="Apple"))
    L.takeout_library(root / "export")            # a photo of Susan and Justin near Paris, among others
    settings = Settings(home=tmp / "home", database_url=fresh_database(pg_url, "places"),
                        model=f"local-dir:{tiny_model_dir}", device="cpu", ocr=False, strictness=0.0)
    env = settings.to_environ()
    run_cli("index", str(root), env=env)
    with psycopg.connect(settings.database_url) as conn:
        ids = dict(conn.execute("SELECT relpath, image_id FROM locations"))
    return settings, env, ids


def api(settings, query: str) -> dict:
    from webapp import create_app

    response = create_app(settings).test_client().get("/api/search?" + query)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def test_indexing_names_the_place_in_english_and_chinese(placed):
    settings, _env, ids = placed
    with psycopg.connect(settings.database_url) as conn:
        place, code, compact = conn.execute(
            "SELECT p.place, i.place_code, i.place_compact FROM photos p JOIN images i USING (id) WHERE p.id = %s",
            (ids["trip/IMG_0.JPG"],)).fetchone()
        unplaced = conn.execute("SELECT place_code FROM images WHERE id = %s", (ids["trip/no_gps.jpg"],)).fetchone()[0]
    assert place == "Kyoto, Japan" and code == "JP" and "日本" in compact.split("|")
    assert unplaced is None


def test_the_place_filter_takes_a_town_a_region_or_a_country_in_any_case(placed):
    settings, env, ids = placed
    kyoto = {ids["trip/IMG_0.JPG"], ids["trip/IMG_1.JPG"]}
    japan = kyoto | {ids["trip/IMG_2.JPG"]}
    assert {h["id"] for h in api(settings, "place=kyoto")["results"]} == kyoto
    for name in ("Japan", "日本", "JAPAN"):
        assert {h["id"] for h in api(settings, f"place={name}")["results"]} == japan
    assert api(settings, "place=Kyo")["results"] == []           # a name as a whole, not a prefix
    lines = run_cli("search", "-f", "place=Osaka", "--json", env=env).stdout.splitlines()
    assert [json.loads(line)["id"] for line in lines[:-1]] == [ids["trip/IMG_2.JPG"]]
    assert json.loads(lines[0])["place"].startswith("Osaka")
    with psycopg.connect(settings.database_url) as conn:
        paris = {r[0] for r in conn.execute("SELECT id FROM images WHERE place_country = 'France'")}
    assert {h["id"] for h in api(settings, "place=france")["results"]} == paris and len(paris) >= 2


def test_a_query_naming_the_place_finds_the_photos_taken_there(placed):
    settings, _env, ids = placed
    body = api(settings, "q=Kyoto&limit=3")
    top = body["results"][:2]
    assert {h["id"] for h in top} == {ids["trip/IMG_0.JPG"], ids["trip/IMG_1.JPG"]}
    assert all(h["written"] and h["snippet_from"] == "place" for h in top)
    assert {h["id"] for h in api(settings, "text=日本")["results"]} >= {h["id"] for h in top}   # the country in Chinese


def test_the_person_filter_finds_the_people_the_export_names(placed):
    settings, env, ids = placed
    with psycopg.connect(settings.database_url) as conn:
        named = {r[0] for r in conn.execute("SELECT id FROM photos WHERE 'susan' = ANY(people)")}
    assert named and {h["id"] for h in api(settings, "person=SUSAN")["results"]} == named
    assert api(settings, "person=Nobody")["results"] == []
    assert run_cli("search", "-f", "person=", env=env, check=False).returncode == 0   # empty: no filter


def test_facets_agree_with_independent_counts(placed):
    settings, _env, _ids = placed
    body = api(settings, "facets=true")
    facets = {name: {v["value"]: v["count"] for v in values} for name, values in body["facets"].items()}
    with psycopg.connect(settings.database_url) as conn:
        years = dict(conn.execute("SELECT extract(year FROM taken_at AT TIME ZONE 'UTC')::int::text, count(*) "
                                  "FROM images WHERE taken_at IS NOT NULL GROUP BY 1"))
        sources = dict(conn.execute("SELECT source, count(DISTINCT image_id) FROM locations GROUP BY 1"))
        places = dict(conn.execute("SELECT place_name, count(*) FROM images WHERE place_name IS NOT NULL GROUP BY 1"))
        cameras = dict(conn.execute("SELECT camera_make, count(*) FROM images WHERE camera_make IS NOT NULL GROUP BY 1"))
        people = dict(conn.execute("SELECT p, count(*) FROM images, jsonb_array_elements_text(extra->'people') p "
                                   "WHERE jsonb_typeof(extra->'people') = 'array' GROUP BY 1"))
    assert facets["year"] == years and facets["source"] == sources and facets["place"] == places
    assert facets["camera"] == cameras and facets["person"] == people and people
    year = body["facets"]["year"][0]
    assert list(body["facets"]["year"]) and year["filter"] == {"taken_from": f"{year['value']}-01-01",
                                                                "taken_to": f"{year['value']}-12-31"}
    # Narrowed by a facet's filter, the counts are the photos that filter keeps.
    narrowed = api(settings, "facets=true&place=Japan")
    assert {v["value"]: v["count"] for v in narrowed["facets"]["place"]} == {"Kyoto": 2, "Osaka-shi": 1}   # GeoNames' name; its region is Osaka
    assert not api(settings, "place=Japan")["facets"]      # only when asked for


@pytest.mark.browser
def test_the_page_offers_the_facets_as_links_that_narrow_the_search(placed, browser, tmp_path):
    from tests.test_browser import new_page, serving

    settings, _env, ids = placed
    with serving(settings, tmp_path / "serve.log") as base:
        page = new_page(browser, 1200)
        page.goto(base + "/")
        page.wait_for_selector("#facets .facet")
        page.locator("#facets a", has_text="Kyoto").click()
        page.wait_for_function("() => location.search.includes('place=Kyoto')")
        page.wait_for_function("() => document.querySelectorAll('.tile').length === 2")
        assert {int(t) for t in page.locator(".tile").evaluate_all("ts => ts.map(t => t.dataset.id)")} == \
            {ids["trip/IMG_0.JPG"], ids["trip/IMG_1.JPG"]}
        assert page.locator("input[name=place]").input_value() == "Kyoto"


def test_the_whole_librarys_facets_are_counted_again_once_it_changes(placed, tmp_path):
    """The page as it opens reuses the whole library's counts; a new photo (here in Kyoto)
    shows in them at the next request, from the same server."""
    from webapp import create_app

    settings, env, _ids = placed
    client = create_app(settings).test_client()

    def kyoto() -> int:
        place = client.get("/api/search?facets=true").get_json()["facets"]["place"]
        return next(v["count"] for v in place if v["value"] == "Kyoto")

    before = kyoto()
    assert kyoto() == before
    L.write(tmp_path / "more" / "IMG_9.JPG", L.jpeg(799, gps=KYOTO))
    run_cli("index", str(tmp_path / "more"), env=env)
    assert kyoto() == before + 1


def test_a_place_is_named_again_when_a_sidecar_moves_the_photo(placed, tmp_path):
    """The same bytes indexed first from a folder (EXIF GPS in Kyoto), then from a Takeout export
    whose sidecar puts them in Paris: the sidecar's place wins, and the name follows it."""
    settings, env, _ids = placed
    photo = L.jpeg(798, gps=KYOTO)
    L.write(tmp_path / "phone" / "IMG_7.JPG", photo)
    run_cli("index", str(tmp_path / "phone"), env=env)
    year = tmp_path / "export" / "takeout-20240101T000000Z-001" / "Takeout" / "Google Photos" / "Photos from 2024"
    L.write(year / "IMG_7.JPG", photo)
    L.write(year / "IMG_7.JPG.json", L.sidecar("IMG_7.JPG", "2024-01-01T10:00:00",
                                               geoData={"latitude": 48.8566, "longitude": 2.3522}))

    def place() -> tuple:
        with psycopg.connect(settings.database_url) as conn:
            return conn.execute("SELECT place_name, place_country FROM images WHERE sha256 = %s",
                                (hashlib.sha256(photo).digest(),)).fetchone()

    assert place() == ("Kyoto", "Japan")
    run_cli("index", str(tmp_path / "export"), env=env)
    assert place() == ("Paris", "France")
