"""Several models side by side: a second (multilingual) model's vectors added to an indexed
library, `clipdex models`, the default and how searches choose a model, dropping one. Both models
are real open_clip models with random weights in local-dir: folders; the multilingual one has a
Hugging Face XLM-RoBERTa text tower and a tokenizer trained on Chinese and English."""

from __future__ import annotations

import json
import os

import psycopg
import pytest

from tests import libraries as L
from tests.conftest import run_cli
from tests.test_browser import browser  # noqa: F401  (the module's Playwright browser fixture)


@pytest.fixture(scope="module")
def two_models(pg_url, template_url, tiny_model_dir, tiny_multilingual_dir, tmp_path_factory):
    from clipdex.config import Settings
    from tests.conftest import fresh_database

    tmp = tmp_path_factory.mktemp("two-models")
    root = tmp / "lib"
    for n in range(6):
        L.write(root / "trip" / f"IMG_{n}.JPG", L.jpeg(400 + n))
    L.write(root / "trip" / "again" / "IMG_0.JPG", (root / "trip" / "IMG_0.JPG").read_bytes())   # a copy
    settings = Settings(home=tmp / "home", database_url=fresh_database(pg_url, "two_models"),
                        model=f"local-dir:{tiny_model_dir}", device="cpu", ocr=False)
    env = settings.to_environ()
    run_cli("index", str(root), env=env)
    with psycopg.connect(settings.database_url) as conn:
        before = conn.execute("SELECT (SELECT count(*) FROM images), (SELECT count(*) FROM thumbnails), "
                              "(SELECT max(id) FROM images)").fetchone()
    touched = root / "trip" / "IMG_5.JPG"   # same bytes, a new time: read and hashed again
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    added = run_cli("index", str(root), "--model", f"local-dir:{tiny_multilingual_dir}", env=env)
    return settings, env, root, before, added


def models(env: dict) -> dict[str, dict]:
    return {m["name"]: m for m in map(json.loads, run_cli("models", "--json", env=env).stdout.splitlines())}


def search_tail(env: dict, *args: str) -> tuple[list[dict], dict]:
    lines = run_cli("search", *args, "--json", env=env).stdout.splitlines()
    return [json.loads(line) for line in lines[:-1]], json.loads(lines[-1])


def test_a_second_model_adds_vectors_and_nothing_else(two_models):
    settings, env, root, (images, thumbnails, last_id), added = two_models
    assert "indexed 0 new images, 6 already known" in added.stdout
    # Five unchanged photos need only the new vectors (the copy of one is not read again); the
    # touched one is read, hashed and found known.
    assert "6 to index (5 known photos needing only this model's vectors), 1 unchanged" in added.stderr
    with psycopg.connect(settings.database_url) as conn:
        after = conn.execute("SELECT (SELECT count(*) FROM images), (SELECT count(*) FROM thumbnails), "
                             "(SELECT max(id) FROM images)").fetchone()
        per_model = dict(conn.execute("SELECT m.name, count(e.image_id) FROM models m "
                                      "JOIN embeddings e ON e.model_id = m.id GROUP BY m.name"))
        # Locations are rewritten only where the file was read as a whole again.
        rewritten = [r[0] for r in conn.execute(
            "SELECT relpath FROM locations WHERE run_id = (SELECT max(id) FROM ingest_runs)")]
    assert after == (images, thumbnails, last_id) == (6, 6, last_id)
    assert sorted(per_model.values()) == [6, 6]
    assert rewritten == ["trip/IMG_5.JPG"]
    listed = models(env)
    english, multilingual = (next(m for m in listed.values() if m["multilingual"] is flag) for flag in (False, True))
    assert english["default"] and not multilingual["default"]
    assert english["dim"] == multilingual["dim"] == 64
    assert multilingual["images"] == multilingual["total"] == 6 and multilingual["complete"]
    assert multilingual["sources"] == {"folder": {"images": 6, "total": 6}}
    text = run_cli("models", env=env).stdout
    assert "(default)" in text and "(multilingual)" in text and "6 of 6 photos" in text
    # A built-in name needs its weights named: random weights are never chosen by omission.
    for command in ("index", "enqueue"):
        refused = run_cli(command, str(root), "--model", "ViT-L-14", env=env, check=False)
        assert refused.returncode == 2 and "give its weights with --pretrained" in refused.stderr


def test_a_chinese_query_goes_to_the_multilingual_model(two_models):
    from webapp import create_app

    settings, env, _root, _before, _added = two_models
    listed = models(env)
    english = next(name for name, m in listed.items() if m["default"])
    multilingual = next(name for name, m in listed.items() if m["multilingual"])
    hits, tail = search_tail(env, "海边的日落")
    assert tail["model"] == multilingual and "answered by" in tail["note"] and len(hits) == 6
    _, tail = search_tail(env, "a sunset at the beach")
    assert tail["model"] == english and tail["note"] is None
    _, tail = search_tail(env, "海边的日落", "--model", english)        # asked for: no routing
    assert tail["model"] == english and tail["note"] is None
    # The next page searches the same model's vectors as the first (both are 64-d: a cursor
    # checked by size alone could mix the two spaces).
    seen, (page, tail) = [], search_tail(env, "夜晚的粉色保时捷", "--limit", "4")
    while True:
        assert tail["model"] == multilingual
        seen += [h["id"] for h in page]
        if not tail["next_cursor"]:
            break
        page, tail = search_tail(env, "--cursor", tail["next_cursor"])
    assert len(seen) == len(set(seen)) == 6
    client = create_app(settings).test_client()
    body = client.get("/api/search?q=海边的日落").get_json()
    assert body["model"] == multilingual and body["note"]
    assert client.get("/api/search?q=sunset&model=no-such-model").status_code == 400
    # psql: the same search on a named model (its query vector cached by the searches above).
    with psycopg.connect(settings.database_url) as conn:
        rows = [r[0] for r in conn.execute("SELECT id FROM search_text('海边的日落', 3, %s)", (multilingual,))]
        assert len(rows) == 3 and rows[0] == hits[0]["id"]
        with pytest.raises(psycopg.errors.RaiseException, match="no single model"):
            conn.execute("SELECT * FROM search_text('海边的日落', 3, 'no-such-model')")


@pytest.mark.browser
def test_the_page_says_which_model_answered(two_models, browser, tmp_path):
    from tests.test_browser import new_page, serving

    settings, env, _root, _before, _added = two_models
    listed = models(env)
    multilingual = next(name for name, m in listed.items() if m["multilingual"])
    english = next(name for name, m in listed.items() if m["default"])
    with serving(settings, tmp_path / "serve.log") as base:
        page = new_page(browser, 900)
        page.goto(base + "/?q=海边的日落")
        page.wait_for_selector(".tile")
        message = page.locator("#message").inner_text()
        assert f"by {multilingual}" in message and "answered by" in message
        # The Filters panel offers both models; choosing one searches its vectors, and the
        # address keeps the choice.
        page.locator("#filters summary").click()
        page.select_option("select[name=model]", english)
        page.wait_for_function("n => document.getElementById('message').textContent.includes('by ' + n)", arg=english)
        assert "model=" in page.url and "answered by" not in page.locator("#message").inner_text()
        page.reload()
        page.wait_for_selector(".tile")
        assert page.locator("select[name=model]").input_value() == english


def test_the_default_moves_only_at_full_coverage_and_a_dropped_model_leaves_the_other(two_models):
    _settings, env, root, _before, _added = two_models
    listed = models(env)
    english = next(name for name, m in listed.items() if m["default"])
    multilingual = next(name for name, m in listed.items() if m["multilingual"])
    L.write(root / "trip" / "IMG_new.JPG", L.jpeg(499))
    run_cli("index", str(root), env=env)                   # the default model only
    refused = run_cli("models", "default", multilingual, env=env, check=False)
    assert refused.returncode == 1 and "has vectors for 6 of 7 photos" in refused.stderr
    assert "searches now use" in run_cli("models", "default", multilingual, "--force", env=env).stdout
    assert models(env)[multilingual]["default"]
    _, tail = search_tail(env, "a sunset at the beach")
    assert tail["model"] == multilingual
    # Back to the English model, then drop the multilingual one: the English search is intact,
    # and a Chinese query is told what to index.
    run_cli("models", "default", english, env=env)
    assert "dropped" in run_cli("models", "drop", multilingual, env=env).stdout
    assert list(models(env)) == [english]
    hits, tail = search_tail(env, "海边的日落")
    assert tail["model"] == english and "reads English only" in tail["note"] and len(hits) == 7
    refused = run_cli("models", "drop", english, env=env, check=False)
    assert refused.returncode == 1 and "is the default model" in refused.stderr


def test_a_query_costs_its_own_length_and_gives_the_same_vector(tiny_multilingual_dir):
    """A Hugging Face tower's padding columns are dropped before encoding; the vectors do not move."""
    import numpy as np
    import torch

    from clipdex.config import Settings
    from clipdex.model import load_model

    model = load_model(Settings(model=f"local-dir:{tiny_multilingual_dir}", device="cpu"))
    assert model.multilingual and model._text_padding is not None
    texts = ["海边的日落", "a pink porsche at night", "猫"]
    trimmed = model.encode_texts(texts)
    with torch.inference_mode():
        full = model._model.encode_text(model._tokenizer(texts)).float().numpy()
    full /= np.linalg.norm(full, axis=1, keepdims=True)
    assert np.abs(trimmed - full).max() < 1e-5


def test_with_no_model_chosen_indexing_follows_the_library(two_models):
    """CLIPDEX_MODEL unset: new photos get the library's default model's vectors (the built-in
    default, whose weights are not on this machine, is never loaded)."""
    settings, env, root, _before, _added = two_models
    unset = {k: v for k, v in env.items() if k not in ("CLIPDEX_MODEL", "CLIPDEX_PRETRAINED")}
    default = next(name for name, m in models(env).items() if m["default"])
    assert "CLIPDEX_MODEL unset: indexing and searches use the library's default model" in run_cli(
        "config", env=unset).stdout
    L.write(root / "trip" / "IMG_later.JPG", L.jpeg(777))
    assert "indexed 1 new image" in run_cli("index", str(root), env=unset).stdout
    with psycopg.connect(settings.database_url) as conn:
        run_model = conn.execute("SELECT model FROM ingest_runs ORDER BY id DESC LIMIT 1").fetchone()[0]
        vectors = [r[0] for r in conn.execute(
            "SELECT m.name FROM embeddings e JOIN models m ON m.id = e.model_id JOIN locations l "
            "ON l.image_id = e.image_id WHERE l.relpath LIKE %s", ("%IMG_later.JPG",))]
    assert run_model == default and vectors == [default]
    _, tail = search_tail(unset, "a sunset at the beach")
    assert tail["model"] == default
