"""Hybrid search at library size: what looking up the words of a query (in the text read from the
photos and in their captions, albums and file names) adds to a search, on a synthetic library.

The library is bench/synthetic's (100,000 images by default, 512-d vectors, one location each),
given words as a real one has them: 8 % of the photos carry OCR text (a few lines drawn from a
vocabulary of Chinese and English shop names, codes and receipt words, with Zipf frequencies, so
some words are in a handful of photos and some in thousands), every location an album name (one of
300) and a file name (``IMG_<n>.JPG``). Queries, 50 of each kind:

- ``rare words``: a code or name held by 1-10 photos (``MU5137``, a receipt number);
- ``common word``: a word held by over 1 % of the photos (``合计``);
- ``album name``: an album's name (0.3 % of the photos, found through the locations);
- ``no words``: a sentence found in no text or name (most queries people type).

Each query is searched through the search service (SearchService.search: the word lookups, the
three tiers, the vector ranking of each, the page's rows and snippets), once to fill the text
cache, then timed; the baseline is the same query with mode=vector, in the same run.

    python -m bench.hybrid [--n 100000] [--json out.json]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psycopg

from bench import synthetic
from bench.report import Report, git_revision, percentile, server_versions
from bench.search import model_folder, with_database
from clipdex import database, embedded_postgres
from clipdex.search.words import compact, name_words, quoted, text_words

log = logging.getLogger("bench.hybrid")

TEXT_SHARE = 0.08
ALBUMS = 300
PER_KIND = 50
RECEIPT_WORDS = ["合计", "发票", "金额", "收款", "订单号", "Total", "Receipt", "Invoice", "WiFi", "密码",
                 "星巴克", "Starbucks", "麦当劳", "Gate", "Seat", "Boarding", "登机牌", "航班", "微信支付", "支付宝"]


def vocabulary(rng: np.random.Generator) -> list[str]:
    """Common receipt words first, then rare codes: index ~ Zipf rank."""
    codes = [f"MU{rng.integers(1000, 9999)}" for _ in range(3000)]
    numbers = [str(rng.integers(10_000_000, 99_999_999)) for _ in range(3000)]
    return RECEIPT_WORDS + [w for pair in zip(codes, numbers) for w in pair]


def add_words(conn: psycopg.Connection, rng: np.random.Generator) -> dict[str, list[str]]:
    """OCR rows for TEXT_SHARE of the images and names for every location; returns query words by kind."""
    words = vocabulary(rng)
    ids = [r[0] for r in conn.execute("SELECT id FROM images ORDER BY id")]
    read = rng.choice(ids, int(len(ids) * TEXT_SHARE), replace=False)
    ranks = np.minimum(rng.zipf(1.3, size=(len(read), 6)) - 1, len(words) - 1)
    held: dict[str, int] = {}
    rows = []
    for image_id, line_ranks in zip(read, ranks):
        text = "\n".join(f"{words[a]} {words[b]}" for a, b in zip(line_ranks[::2], line_ranks[1::2]))
        for word in set(words[r] for r in line_ranks):
            held[word] = held.get(word, 0) + 1
        rows.append((int(image_id), text, text_words(text), compact(text)))
    conn.execute("DELETE FROM image_texts WHERE engine = 'bench'")
    with conn.cursor().copy("COPY image_texts (image_id, engine, text, words, compact) FROM STDIN") as copy:
        for image_id, text, lexemes, folded in rows:
            copy.write_row((image_id, "bench", text, " ".join(map(quoted, lexemes)), folded))
    albums = [f"Album {k} {word}" for k, word in enumerate(rng.choice(["Kyoto", "Paris", "家庭", "旅行", "Ski"],
                                                                      ALBUMS))]
    locations = conn.execute("SELECT id, relpath FROM locations ORDER BY id").fetchall()
    chosen = rng.integers(0, ALBUMS, len(locations))
    for start in range(0, len(locations), 20_000):
        part = locations[start:start + 20_000]
        named = [(loc_id, albums[a], f"IMG_{loc_id}.JPG") for (loc_id, _), a in zip(part, chosen[start:])]
        made = [name_words(None, album, name) for _, album, name in named]
        conn.execute("UPDATE locations l SET album = n.album, words = n.words::tsvector, words_compact = n.compact "
                     "FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::text[]) AS n(id, album, words, compact) "
                     "WHERE l.id = n.id", ([x[0] for x in named], [x[1] for x in named],
                                           [w for w, _ in made], [c for _, c in made]))
    conn.execute("ANALYZE image_texts")
    conn.execute("ANALYZE locations")
    rare = [w for w, count in held.items() if 1 <= count <= 10]
    common = [w for w, count in held.items() if count > len(ids) / 100]
    pick = np.random.default_rng(5)
    return {
        "rare words": list(pick.choice(rare, PER_KIND)),
        "common word": list(pick.choice(common, PER_KIND)),
        "album name": [" ".join(a.split()[:2]) for a in pick.choice(albums, PER_KIND)],
        "no words": [f"a quiet street at dusk number {k}" for k in range(PER_KIND)],
    }


def main(argv: list[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(prog="python -m bench.hybrid", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--smoke", action="store_true", help="3,000 rows of 64-d, 5 queries a kind")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    global PER_KIND
    if args.smoke:
        args.n, args.dim, PER_KIND = 3000, 64, 5
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    log.setLevel(logging.INFO)
    from clipdex.config import Settings
    from clipdex.search import Filters, QuerySpec, SearchRequest, SearchService

    home = Path(tempfile.mkdtemp(prefix="clipdex-bench-hybrid-"))
    try:
        base = embedded_postgres.server_url(home)
        url = with_database(base, "bench_hybrid")
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute("CREATE DATABASE bench_hybrid")
        database.upgrade(url)
        model_dir, model_key = model_folder(home, args.dim)
        rng = np.random.default_rng(11)
        with psycopg.connect(url) as conn:
            log.info("loading %d images", args.n)
            synthetic.create(conn, args.n, args.dim, seed=3, model_key=model_key)
            log.info("giving them words")
            start = time.perf_counter()
            queries = add_words(conn, rng)
            words_seconds = time.perf_counter() - start
            conn.commit()
        with psycopg.connect(url, autocommit=True) as conn:   # what autovacuum does soon after a bulk load
            conn.execute("VACUUM ANALYZE")
        settings = Settings(home=home, database_url=url, model=f"local-dir:{model_dir}", device="cpu", offline=True)
        db = database.open_database(settings)
        service = SearchService(settings, db)
        report = Report(f"Hybrid search: {args.n:,} synthetic images, {TEXT_SHARE:.0%} with OCR text, "
                        f"every file with an album and a file name; a page of 40",
                        "mode=vector, same query")
        with db.connect(autocommit=True) as conn:
            report.facts.update(server_versions(conn))
            report.facts["revision"] = git_revision()
            for kind, texts in queries.items():
                timings = {"hybrid": [], "vector": []}
                tiers = []
                for text in texts:
                    for mode in ("vector", "hybrid"):
                        request = SearchRequest(QuerySpec(texts=[(str(text), 1.0)]), Filters(), limit=40, mode=mode)
                        service.search(conn, request)                       # fills the text cache
                        start = time.perf_counter()
                        page = service.search(conn, request)
                        timings[mode].append(1000 * (time.perf_counter() - start))
                        if mode == "hybrid":
                            tiers.append(sum(hit.written for hit in page.hits))
                report.add(f"search p50, {kind}", percentile(timings["hybrid"], 50), percentile(timings["vector"], 50),
                           unit="ms", higher_is_better=False,
                           note=f"p95 {percentile(timings['hybrid'], 95):.1f} ms; photos with the words on the "
                                f"first page: median {int(np.median(tiers))}")
        report.facts["words"] = (f"OCR rows and location names written in {words_seconds:.1f} s "
                                 "(clipdex's tokenizer, COPY and UPDATE)")
        report.emit(args.json)
        return report
    finally:
        embedded_postgres.stop(home)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
