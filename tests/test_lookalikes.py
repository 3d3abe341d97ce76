"""One picture in other bytes: look-alike groups kept by the indexer, listed by `clipdex dupes`
and psql's `duplicate_groups`, folded into one tile per picture in search results (with paging
that neither repeats nor skips a picture), and opened again in the browser.

A real `clipdex index` of a generated set (bench/lookalikes.py, small pictures): three scenes,
each an original (with a camera's EXIF, the copy worth keeping) and a copy of every kind —
recompressed, resized, cropped, WebP, screenshot with bars, burst — and another shot of the scene,
which is another picture; and two unrelated photos."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import psycopg
import pytest
from PIL import Image

from bench.lookalikes import COPY_KINDS, lookalike_set
from clipdex.likeness import distance, look_of
from tests import libraries as L
from tests.conftest import run_cli
from tests.test_browser import browser  # noqa: F401  (the module's Playwright browser fixture)

SCENES = 3


def _with_camera(data: bytes) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(data)).save(out, "JPEG", quality=92, exif=L.exif_bytes(make="Canon", model="EOS R6"))
    return out.getvalue()


def _write_set(root) -> dict[str, list[str]]:
    """Writes the set under ``root``; returns scene -> its files (the original first)."""
    scenes: dict[str, list[str]] = {}
    for item in lookalike_set(SCENES, copies=len(COPY_KINDS), other_shots=1, seed=5, size=(360, 270)):
        data = _with_camera(item.data) if item.kind == "original" else item.data
        L.write(root / "set" / item.name, data)
        if item.kind != "other_shot":
            scenes.setdefault(item.name.split("_")[0], []).append(f"set/{item.name}")
    for n in range(2):
        L.write(root / "set" / f"unrelated_{n}.jpg", L.jpeg(900 + n, size=(300, 200)))
    return scenes


@pytest.fixture(scope="module")
def copies(pg_url, template_url, tiny_model_dir, tmp_path_factory):
    from clipdex.config import Settings
    from tests.conftest import fresh_database

    tmp = tmp_path_factory.mktemp("lookalikes")
    root = tmp / "lib"
    scenes = _write_set(root)
    settings = Settings(home=tmp / "home", database_url=fresh_database(pg_url, "lookalikes"),
                        model=f"local-dir:{tiny_model_dir}", device="cpu", ocr=False, strictness=0.0)
    env = settings.to_environ()
    run_cli("index", str(root), env=env)
    with psycopg.connect(settings.database_url) as conn:
        ids = dict(conn.execute("SELECT relpath, image_id FROM locations").fetchall())
    return settings, env, root, scenes, ids


def groups_of(settings) -> dict[int, set[int]]:
    with psycopg.connect(settings.database_url) as conn:
        rows = conn.execute("SELECT look_group, array_agg(id) FROM images GROUP BY look_group").fetchall()
    return {group: set(members) for group, members in rows}


def api(settings, query: str) -> dict:
    from webapp import create_app

    response = create_app(settings).test_client().get("/api/search?" + query)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def test_the_hash_sees_through_bars_and_ignores_blank_pictures():
    rng = np.random.default_rng(3)
    picture = Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).resize((320, 240))
    framed = Image.new("RGB", (320, 640), (0, 0, 0))
    framed.paste(picture, (0, 170))
    plain, in_bars = look_of(picture), look_of(framed)
    assert distance(plain.hash, in_bars.hash) <= 2
    assert in_bars.share == pytest.approx(0.375, abs=0.01) and plain.share == 1.0
    other = look_of(Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).resize((320, 240)))
    assert distance(plain.hash, other.hash) > 16
    assert look_of(Image.new("RGB", (100, 80), (120, 30, 200))).hash is None


def test_every_copy_joins_its_original_and_other_pictures_stay_apart(copies):
    settings, _env, _root, scenes, ids = copies
    groups = groups_of(settings)
    expected = [{ids[name] for name in files} for files in scenes.values()]
    for members in expected:
        assert members in groups.values()
    alone = {ids[name] for name in ids if "other_shot" in name or "unrelated" in name}
    for image_id in alone:
        assert {image_id} in groups.values()
    assert len(groups) == len(expected) + len(alone)


def test_dupes_lists_each_group_with_the_camera_original_first(copies):
    settings, env, _root, scenes, ids = copies
    lines = run_cli("dupes", "--json", env=env).stdout.splitlines()
    listed = [json.loads(line) for line in lines]
    assert sorted(sorted(g["image_ids"]) for g in listed) == sorted(sorted(ids[n] for n in f) for f in scenes.values())
    for group in listed:
        original = next(f[0] for f in scenes.values() if ids[f[0]] in group["image_ids"])
        assert group["best"] == ids[original] == group["image_ids"][0]
        assert group["paths"][0].endswith(original) and group["copies"] == len(COPY_KINDS) + 1
    text = run_cli("dupes", env=env).stdout
    assert text.count("best ") == SCENES
    with psycopg.connect(settings.database_url) as conn:
        view = conn.execute("SELECT best_id, copies FROM duplicate_groups ORDER BY best_id").fetchall()
        some_copy = ids[next(iter(scenes.values()))[3]]
        group = conn.execute("SELECT id FROM lookalikes(%s)", (some_copy,)).fetchall()
    assert view == sorted((g["best"], g["copies"]) for g in listed)
    assert [r[0] for r in group] == next(g["image_ids"] for g in listed if some_copy in g["image_ids"])


@pytest.mark.parametrize("query", ["q=a+photo", "", "q=a+photo&sort=newest"])
def test_results_fold_copies_into_one_tile_and_page_without_repeats(copies, query):
    settings, _env, _root, scenes, ids = copies
    seen: list[int] = []
    similar = {}
    page = api(settings, f"{query}&limit=2")
    pages = 1
    while True:
        seen += [hit["id"] for hit in page["results"]]
        similar.update({hit["id"]: hit["similar"] for hit in page["results"]})
        if not page["next_cursor"]:
            break
        page = api(settings, f"cursor={page['next_cursor']}")
        pages += 1
    assert len(seen) == len(set(seen)) and pages > 2
    groups = [{ids[name] for name in files} for files in scenes.values()]
    for members in groups:   # each picture once, standing for its other copies
        shown = [i for i in seen if i in members]
        assert len(shown) == 1 and similar[shown[0]] == len(members) - 1
    everything = set(ids.values())
    assert set(seen) | set().union(*groups) == everything
    unfolded = api(settings, f"{query}&limit=100&collapse=false")
    assert sorted(hit["id"] for hit in unfolded["results"]) == sorted(everything)
    assert all(hit["similar"] == 0 for hit in unfolded["results"])


def test_folding_respects_the_filters(copies):
    """A filter that keeps one copy of a picture shows that copy, alone."""
    settings, _env, _root, scenes, ids = copies
    files = next(iter(scenes.values()))
    screenshot = next(name for name in files if "screenshot" in name)
    page = api(settings, "q=a+photo&format=png&limit=50")
    hits = {hit["id"]: hit["similar"] for hit in page["results"]}
    assert hits[ids[screenshot]] == 0


def test_lookalikes_of_lists_a_picture_s_copies(copies):
    settings, _env, _root, scenes, ids = copies
    files = next(iter(scenes.values()))
    page = api(settings, f"lookalikes_of={ids[files[2]]}&limit=50")
    assert sorted(hit["id"] for hit in page["results"]) == sorted(ids[name] for name in files)
    from webapp import create_app

    client = create_app(settings).test_client()
    response = client.get("/api/search?lookalikes_of=abc")
    assert response.status_code == 400 and "lookalikes_of" in response.get_json()["error"]["message"]
    detail = client.get(f"/api/images/{ids[files[2]]}").get_json()
    assert sorted(detail["lookalikes"]) == sorted(ids[name] for name in files if name != files[2])
    assert detail["lookalikes"][0] == ids[files[0]]   # the camera's original, best first
    page = client.get(f"/images/{ids[files[2]]}").get_data(as_text=True)
    assert f"Other copies of this picture ({len(files) - 1})" in page and f'href="/images/{ids[files[0]]}"' in page


def test_a_library_indexed_before_groups_gets_them_from_its_thumbnails(copies):
    """After the upgrade every photo is ungrouped and unhashed: `clipdex dupes` hashes the stored
    thumbnails and finds the same groups."""
    settings, env, _root, _scenes, _ids = copies
    before = sorted(sorted(m) for m in groups_of(settings).values())
    with psycopg.connect(settings.database_url) as conn:
        conn.execute("UPDATE images SET look = NULL, look_group = NULL, picture_share = NULL")
    result = run_cli("dupes", env=env)
    assert "grouped" in result.stderr
    assert sorted(sorted(m) for m in groups_of(settings).values()) == before


@pytest.mark.browser
def test_the_page_shows_one_tile_per_picture_and_opens_its_copies(copies, browser, tmp_path):
    from tests.test_browser import new_page, serving

    settings, _env, _root, scenes, ids = copies
    with serving(settings, tmp_path / "serve.log") as base:
        page = new_page(browser, 1200)
        page.goto(base + "/?q=a+photo")
        page.wait_for_selector(".tile")
        page.wait_for_function("() => !document.querySelector('#more') || document.querySelector('#more').hidden")
        assert page.locator("button.similar").count() == SCENES
        tiles_before = page.locator(".tile").count()
        button = page.locator("button.similar").first
        assert button.inner_text() == f"+{len(COPY_KINDS)} similar"
        group_tile = int(button.get_attribute("data-id"))
        button.click()
        page.wait_for_function(f"() => document.querySelectorAll('.tile').length === {tiles_before + len(COPY_KINDS)}")
        opened = {int(t) for t in page.locator(".cell.copy .tile").evaluate_all("ts => ts.map(t => t.dataset.id)")}
        members = next({ids[n] for n in files} for files in scenes.values() if group_tile in {ids[n] for n in files})
        assert opened == members - {group_tile}
        assert button.inner_text() == "Hide similar"
        button.click()
        page.wait_for_function(f"() => document.querySelectorAll('.tile').length === {tiles_before}")
        # The keyboard: S on a focused photo opens its copies, and closes them.
        page.locator(f'.tile[data-id="{group_tile}"]').focus()
        page.keyboard.press("s")
        page.wait_for_function(f"() => document.querySelectorAll('.tile').length === {tiles_before + len(COPY_KINDS)}")
        page.keyboard.press("s")
        page.wait_for_function(f"() => document.querySelectorAll('.tile').length === {tiles_before}")


def test_a_deleted_first_copy_leaves_its_group_together(copies, tmp_path):
    """(Last: it deletes a file of the module's library.) The group's other copies are grouped
    again, together, around a new first copy."""
    settings, env, root, scenes, ids = copies
    work = tmp_path / "lib"
    shutil.copytree(root, work)
    run_cli("index", str(work), env=env)   # the same bytes again, in a second folder
    files = next(iter(scenes.values()))
    with psycopg.connect(settings.database_url) as conn:
        first = conn.execute("SELECT look_group FROM images WHERE id = %s", (ids[files[0]],)).fetchone()[0]
    founder = next(name for name in files if ids[name] == first)
    (root / founder).unlink()
    (work / founder).unlink()
    run_cli("index", str(root), env=env)
    run_cli("index", str(work), env=env)
    groups = groups_of(settings)
    rest = {ids[name] for name in files if name != founder}
    assert rest in groups.values()
    assert ids[founder] not in set().union(*groups.values())
