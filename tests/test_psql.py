"""The README's psql examples, run as written through psql on an indexed library."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import psycopg
import pytest

from clipdex import embedded_postgres
from tests.conftest import run_cli

REPO = Path(__file__).resolve().parent.parent


def readme_sql() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text[text.index("### Search from psql"):]
    section = section[:section.index("\n## ")]
    return re.findall(r"```sql\n(.*?)```", section, re.S)


def test_readme_has_at_least_six_examples():
    examples = readme_sql()
    assert len(examples) >= 6
    assert any("GROUP BY" in e for e in examples) and any("WHERE" in e and "<=>" in e for e in examples)


@pytest.fixture(scope="module")
def indexed(library):
    settings, db, _root = library
    texts = sorted({t for sql in readme_sql() for t in re.findall(r"text_embedding\('([^']*)'\)", sql)}
                   | {t for sql in readme_sql() for t in re.findall(r"search_text\('([^']*)'", sql)})
    out = run_cli("embed-text", *texts, env=settings.to_environ()).stdout
    assert out.count("cached:") == len(texts)
    return db


@pytest.mark.parametrize("number", range(len(readme_sql())))
def test_readme_example_runs_in_psql(indexed, number):
    sql = readme_sql()[number]
    proc = subprocess.run([str(embedded_postgres.psql_path()), indexed.url, "-v", "ON_ERROR_STOP=1", "-X", "-c", sql],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "row" in proc.stdout


def test_psql_functions_agree_with_the_core(indexed):
    with psycopg.connect(indexed.url) as conn:
        by_text = conn.execute("SELECT id, score FROM search_text('sunset', 5)").fetchall()
        assert len(by_text) == 5 and [s for _, s in by_text] == sorted((s for _, s in by_text), reverse=True)
        image_id = by_text[0][0]
        similar = [r[0] for r in conn.execute("SELECT id FROM similar_to(%s, 5)", (image_id,))]
        assert len(similar) == 5 and image_id not in similar
        # Filters in psql fill the LIMIT (iterative scan is the database default).
        rows = conn.execute(
            "SELECT p.id FROM vectors v JOIN photos p USING (id) WHERE p.format = 'gif' "
            "ORDER BY v.embedding <=> text_embedding('sunset') LIMIT 5").fetchall()
        assert len(rows) == conn.execute("SELECT count(*) FROM images WHERE format = 'gif'").fetchone()[0]
        with pytest.raises(psycopg.errors.RaiseException, match='no embedding cached for "never asked"'):
            conn.execute("SELECT text_embedding('never asked')")
