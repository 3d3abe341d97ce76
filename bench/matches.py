"""Which photos match: the calibrated cut-off against the best fixed cosine threshold.

A library with planted matches (bench/planted.py: relevant sets of 3 to 2,000 photos, tight and
loose, each with as many hard negatives, and queries nothing answers) goes into the embedded
PostgreSQL. For every query, PostgreSQL's own ``clipdex_match_cut`` (what every search runs)
decides the cut-off at each strictness; the matched set is every photo within it (an exact
scan). Scored by F1 against the planted set, averaged over queries, beside the single cosine
threshold that does best over all queries, chosen knowing every answer (the most a fixed
threshold could do). Then what the cut-off, a page of matches by date and the facets cost (p50 ms).

    python -m bench.matches [--n 50000] [--seed 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bench.planted import f1, load_planted
from bench.report import Report, percentile, scratch_folder

STRICTNESS = (0.25, 0.5, 0.75, 1.0)


def main(argv: list[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(prog="python -m bench.matches", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1, help="another draw of the planted library")
    parser.add_argument("--smoke", action="store_true", help="3,000 photos, two repeats")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    if args.smoke:
        args.n, args.repeats = 3000, 2
    from clipdex.config import Settings
    from clipdex.database import open_database
    from clipdex.search import SearchRequest, SearchService

    with scratch_folder("clipdex-bench-matches-") as work:
        report = Report(f"Which photos match: calibrated cut-off, {args.n:,} photos with planted matches",
                        "best fixed cosine threshold (in hindsight)")
        settings = Settings(home=work / "home", device="cpu", ocr=False)
        db = open_database(settings)
        with db.connect(autocommit=True) as conn:
            data, queries = load_planted(conn, args.n, args.dim, seed=args.seed)
            stored = data.vectors
            relevant = [set(q.relevant.tolist()) for q in queries]
            rows = {int(i): r for r, i in enumerate(data.ids)}
            distances = [1 - stored @ q.vector for q in queries]
            # The best fixed threshold, knowing every answer.
            grid = np.linspace(0.2, 1.2, 501)
            fixed_scores = [np.mean([f1(set(np.nonzero(d <= t)[0].tolist()), r)[0]
                                     for d, r in zip(distances, relevant)]) for t in grid]
            best = int(np.argmax(fixed_scores))
            fixed_f1 = fixed_scores[best]
            per_query_fixed = [f1(set(np.nonzero(d <= grid[best])[0].tolist()), r) for d, r in zip(distances, relevant)]
            cut_ms: list[float] = []
            for strictness in STRICTNESS:
                results = []
                for n, query in enumerate(queries):
                    started = time.perf_counter()
                    cut = conn.execute("SELECT distance FROM clipdex_match_cut(%s::halfvec, %s::smallint, %s)",
                                       (query.vector.tolist(), data.model_id, strictness)).fetchone()[0]
                    cut_ms.append(1000 * (time.perf_counter() - started))
                    within = {int(r[0]) for r in conn.execute(
                        "SELECT e.image_id FROM embeddings e WHERE e.model_id = %s AND e.embedding <=> %s::halfvec <= %s",
                        (data.model_id, query.vector.tolist(), cut))}
                    results.append(f1({rows[i] for i in within}, relevant[n]))
                mean = [float(np.mean([r[k] for r in results])) for k in range(3)]
                by_size = ", ".join(f"{q.size}{'t' if q.tightness > 0.7 else 'l' if q.size else ''}: {r[0]:.2f}"
                                    for q, r in zip(queries, results))
                report.add(f"mean F1, strictness {strictness}", round(mean[0], 3), round(fixed_f1, 3),
                           note=f"precision {mean[1]:.2f}, recall {mean[2]:.2f}; per query (size, t tight / l loose): "
                                f"{by_size}")
            fixed_detail = ", ".join(f"{q.size}: {r[0]:.2f}" for q, r in zip(queries, per_query_fixed))
            report.add("best fixed threshold (cosine score)", round(1 - grid[best], 3), None,
                       note=f"per query F1 at it: {fixed_detail}")
            report.add("cut-off, p50 per query", percentile(cut_ms, 50), None, unit="ms", higher_is_better=False,
                       note=f"p95 {percentile(cut_ms, 95):.1f} ms: sample of 2,000, the index's top 200, the rule")
            # A page of 40 matches by date, and by relevance, through the search service.
            service = SearchService(settings, db, model_key="planted")
            add_places_people_albums(conn)
            tight = [q.size for q in queries if q.tightness > 0.7]
            for sort in ("relevance", "newest"):
                for size in (min(tight), max(tight)):
                    n = next(i for i, q in enumerate(queries) if q.size == size and q.tightness > 0.7)
                    timings, page = [], None
                    for _ in range(args.repeats):
                        started = time.perf_counter()
                        page = service.search(conn, SearchRequest.parse(
                            {"q": [f"planted {n}"], "mode": ["vector"], "sort": [sort]}))
                        timings.append(1000 * (time.perf_counter() - started))
                    report.add(f"page of matches by {sort}, {size} planted", percentile(timings, 50), None, unit="ms",
                               higher_is_better=False,
                               note=f"{'about ' if not page.matches_exact else ''}{page.matches} matches; "
                                    f"{page.strategy}; p95 {percentile(timings, 95):.1f} ms; cut-off included")
            # Facets: the whole library counted, then reused (the page as it opens), a quarter of it,
            # and the matches of the largest tight set.
            from clipdex.search.facets import facet_counts
            from clipdex.search.filters import Filters

            timings = []
            for _ in range(max(3, args.repeats // 4)):
                started = time.perf_counter()
                facet_counts(conn, Filters(), None)
                timings.append(1000 * (time.perf_counter() - started))
            report.add("facets of the whole library, counted", percentile(timings, 50), None, unit="ms",
                       higher_is_better=False, note=f"{len(stored):,} photos; kept until the library changes")
            largest = next(i for i, q in enumerate(queries) if q.size == max(tight) and q.tightness > 0.7)
            for label, params in (("facets of the whole library, reused (a browse)", {}),
                                  ("facets of a quarter of the library (source=iphone)", {"source": ["iphone"]}),
                                  ("facets of a search's matches", {"q": [f"planted {largest}"], "mode": ["vector"]})):
                timings = []
                for _ in range(args.repeats):
                    started = time.perf_counter()
                    page = service.search(conn, SearchRequest.parse({**params, "facets": ["true"]}))
                    timings.append(1000 * (time.perf_counter() - started))
                report.add(label, percentile(timings, 50), None, unit="ms", higher_is_better=False,
                           note=f"p95 {percentile(timings, 95):.1f} ms; the page included; "
                                f"{sum(v['count'] for v in page.facets['year'])} photos counted"
                                f"{' (partial)' if page.facets_partial else ''}; places for 60 %, people for 10 %, "
                                "albums for 30 % of the photos")
            # Copies of one picture folded into one tile, against the same pages with every copy
            # shown (collapse=false): every photo one of three copies (ids in a row: the matches'
            # copies are other photos), then the largest set's matches in threes among themselves.
            matched_ids = sorted(int(data.ids[r]) for r in queries[largest].relevant)
            for label, grouping, grouping_params in (
                    ("copies elsewhere", "UPDATE images SET look_group = id - (id - 1) %% 3", ()),
                    ("copies among the matches", "UPDATE images SET look_group = m.first FROM unnest(%s::bigint[], "
                                                 "%s::bigint[]) AS m(id, first) WHERE images.id = m.id",
                     (matched_ids, [matched_ids[n - n % 3] for n in range(len(matched_ids))]))):
                conn.execute("UPDATE images SET look_group = id")
                conn.execute(grouping, grouping_params)
                for sort in ("relevance", "newest"):
                    p50 = {}
                    for collapse in ("true", "false"):
                        timings = []
                        for _ in range(args.repeats):
                            started = time.perf_counter()
                            page = service.search(conn, SearchRequest.parse(
                                {"q": [f"planted {largest}"], "mode": ["vector"], "sort": [sort],
                                 "collapse": [collapse]}))
                            timings.append(1000 * (time.perf_counter() - started))
                        p50[collapse] = (percentile(timings, 50), len(page.hits), page.folded)
                    report.add(f"page of matches by {sort}, {label}, folded", p50["true"][0], p50["false"][0],
                               unit="ms", higher_is_better=False,
                               note=f"{p50['true'][1]} tiles ({p50['true'][2]} copies folded) against "
                                    f"{p50['false'][1]} photos with collapse=false")
        report.emit(args.json)
        return report


def add_places_people_albums(conn) -> None:
    """What the facets count beyond the synthetic columns: GPS named by the indexer's own
    geocoding for 60 % of the photos, people for 10 %, an album for 30 % of the locations."""
    from indexer.store import fill_places

    conn.execute("UPDATE images SET latitude = 20 + (hashint8(id) % 3000) / 100.0, "
                 "longitude = 100 + (hashint8(id * 7) % 4000) / 100.0 WHERE abs(hashint8(id)) % 10 < 6")
    conn.execute("UPDATE images SET extra = jsonb_build_object('people', jsonb_build_array("
                 "'Person ' || abs(hashint8(id)) % 40)) WHERE abs(hashint8(id * 3)) % 10 = 0")
    conn.execute("UPDATE locations SET album = 'Album ' || abs(hashint8(image_id)) % 200 "
                 "WHERE abs(hashint8(image_id * 5)) % 10 < 3")
    while fill_places(conn):
        pass
    conn.execute("ANALYZE images")
    conn.execute("ANALYZE locations")


if __name__ == "__main__":
    main()
