"""How well look-alike groups find the copies of a picture, and what grouping costs.

A generated set (bench/lookalikes.py: each scene's original, a copy of every kind — recompressed,
resized, cropped up to 10 %, WebP, screenshot with bars, burst — and other shots of the scene,
which are other pictures) plus unrelated photos. Every file goes the indexer's way: decoded as
for the model, thumbnail, hash (clipdex/likeness.py). The rows go into the embedded PostgreSQL
and indexer/lookalikes.py groups them, once per bit threshold. Scored over pairs: precision
(pairs grouped together that are one picture) and recall (pairs of one picture grouped
together), recall per copy kind (the copy in its original's group), and other shots kept apart.
Then the grouping's speed on a library of random hashes (--scale), the cost that matters at a
million photos.

    python -m bench.dupes [--scenes 120] [--unrelated 2000] [--scale 100000] [--json out.json]
"""

from __future__ import annotations

import argparse
import hashlib
import time
from concurrent.futures import ProcessPoolExecutor
from itertools import combinations

import numpy as np

from bench.report import Report, scratch_folder

BITS = (6, 8, 10, 12, 14, 16)
Row = tuple  # (64-bit hash, 256-bit hash, share of the frame that is picture, width, height)


def _look(data: bytes) -> Row:
    """What the indexer keeps of a file: its look, and the size it decodes to."""
    from clipdex.imaging import decode
    from indexer.thumbnail import make_thumbnail

    decoded = decode(data, min_side=224, max_pixels=200_000_000)
    look = make_thumbnail(decoded.image).look
    return look.hash, look.detail, look.share, decoded.width, decoded.height


def _unrelated(seed: int) -> bytes:
    import io

    from bench.corpus import photo

    out = io.BytesIO()
    photo(np.random.default_rng(10_000 + seed), 480, 360).save(out, "JPEG", quality=85)
    return out.getvalue()


def _chat_screenshot(seed: int) -> bytes:
    """Another chat app screenshot: the same bars, background and layout, other messages."""
    from bench.corpus import screenshot_png

    return screenshot_png(np.random.default_rng(20_000 + seed), seed, 1170, 2532)


def pair_scores(truth: list[int], found: list[int]) -> tuple[float, float]:
    """Pairwise precision and recall of a grouping (``found``) against the answer (``truth``)."""
    same_truth = same_found = both = 0
    for a, b in combinations(range(len(truth)), 2):
        t, f = truth[a] == truth[b], found[a] == found[b]
        same_truth += t
        same_found += f
        both += t and f
    return both / max(1, same_found), both / max(1, same_truth)


def _store(conn, rows: list[Row], start: int = 0, grouped: bool = False) -> list[int]:
    """Image rows holding these looks (ungrouped, or each its own group's first image); their ids."""
    ids = []
    for at in range(0, len(rows), 50_000):
        part = rows[at:at + 50_000]
        ids += [r[0] for r in conn.execute(
            "INSERT INTO images (sha256, format, width, height, byte_size, look, look_detail, picture_share) "
            "SELECT n.sha, 'jpeg', n.width, n.height, 1000, n.look::bit(64), n.detail, n.share "
            "FROM unnest(%s::bytea[], %s::int[], %s::int[], %s::bigint[], %s::bytea[], %s::real[]) WITH ORDINALITY "
            "AS n(sha, width, height, look, detail, share, n) ORDER BY n.n RETURNING id",
            ([hashlib.sha256(f"{start + at + n}".encode()).digest() for n in range(len(part))],
             [r[3] for r in part], [r[4] for r in part], [r[0] for r in part], [r[1] for r in part],
             [r[2] for r in part])).fetchall()]
    if grouped:
        conn.execute("UPDATE images SET look_group = id WHERE id = ANY(%s)", (ids,))
    return ids


def main(argv: list[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(prog="python -m bench.dupes", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", type=int, default=120)
    parser.add_argument("--other-shots", type=int, default=2)
    parser.add_argument("--unrelated", type=int, default=2000, help="photos of other scenes, each alone")
    parser.add_argument("--screenshots", type=int, default=300,
                        help="chat app screenshots, each alone (alike in layout, not in content)")
    parser.add_argument("--scale", type=int, default=100_000, help="random hashes grouped from scratch (speed)")
    parser.add_argument("--library", type=int, default=1_000_000,
                        help="groups already there when 1,000 more photos are grouped (speed)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--smoke", action="store_true", help="a handful of scenes, small pictures")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    size = (1200, 900)
    if args.smoke:
        args.scenes, args.unrelated, args.screenshots, args.scale, args.library, size = 3, 20, 4, 500, 2000, (360, 270)
    from bench.lookalikes import COPY_KINDS, lookalike_set
    from clipdex.config import Settings
    from clipdex.database import open_database
    from clipdex.likeness import detail_distance
    from indexer.lookalikes import DETAIL_BITS, LOOKALIKE_BITS, group_new_images

    report = Report(f"Look-alike groups: {args.scenes} scenes × (original, {len(COPY_KINDS)} copies, "
                    f"{args.other_shots} other shots) + {args.unrelated:,} unrelated photos + "
                    f"{args.screenshots} chat screenshots",
                    "the 64 bits alone, every pair within them joined (chains)")
    started = time.perf_counter()
    items = lookalike_set(args.scenes, copies=len(COPY_KINDS), other_shots=args.other_shots, seed=args.seed,
                          size=size)
    with ProcessPoolExecutor() as pool:
        looks = list(pool.map(_look, [item.data for item in items], chunksize=8))
        unrelated = list(pool.map(_look, pool.map(_unrelated, range(args.unrelated), chunksize=32), chunksize=32))
        unrelated += list(pool.map(_look, pool.map(_chat_screenshot, range(args.screenshots), chunksize=4), chunksize=4))
    report.add("set generated and hashed", round(time.perf_counter() - started, 1), unit="s", higher_is_better=False)
    alone = args.unrelated + args.screenshots
    truth = [item.group for item in items] + [-1 - n for n in range(alone)]
    kinds = [item.kind for item in items] + ["unrelated"] * args.unrelated + ["screenshot_alone"] * args.screenshots
    scene_of = [item.name.split("_")[0] for item in items]
    original_of = {scene_of[n]: n for n, item in enumerate(items) if item.kind == "original"}
    with scratch_folder("clipdex-bench-dupes-") as work:
        db = open_database(Settings(home=work / "home", device="cpu", ocr=False))
        with db.connect(autocommit=True) as conn:
            ids = _store(conn, looks + unrelated)
            # How often two unrelated pictures fall within the bits: the chance a new photo finds a
            # wrong group grows with the library (about library size × this share, for small shares).
            hashed = [row for row in unrelated if row[0] is not None]
            apart = np.array([row[0] for row in hashed], dtype=np.int64).view(np.uint64)
            pairs = len(hashed) * (len(hashed) - 1) // 2
            close = []   # (64-bit distance, 256-bit distance) of the unrelated pairs within 16 bits
            for a in range(len(hashed) - 1):
                distance = np.bitwise_count(apart[a] ^ apart[a + 1:])
                close += [(int(distance[b]), detail_distance(hashed[a][1], hashed[a + 1 + b][1]))
                          for b in np.flatnonzero(distance <= max(BITS))]
            for bits in BITS:
                alone = sum(d <= bits for d, _ in close) / pairs
                confirmed = sum(d <= bits and fine <= DETAIL_BITS for d, fine in close) / pairs
                report.add(f"{bits} bits: unrelated pairs within", f"{confirmed:.1e}", f"{alone:.1e}",
                           note=f"of {pairs:,}; a new photo beside 1,000,000 others meets a wrong group about "
                                f"{min(1.0, confirmed * 1e6):.1%} of the time ({min(1.0, alone * 1e6):.0%} on the "
                                "64 bits alone)")
            for bits, detail_bits in [(bits, DETAIL_BITS) for bits in BITS] + [(LOOKALIKE_BITS, 256)]:
                conn.execute("UPDATE images SET look_group = NULL")
                group_new_images(conn, bits=bits, detail_bits=detail_bits)
                groups = dict(conn.execute("SELECT id, look_group FROM images").fetchall())
                found = [groups[i] for i in ids]
                precision, recall = pair_scores(truth, found)
                chained = pair_scores(truth, chains([row[0] for row in looks + unrelated], bits))
                by_kind = []
                for kind in COPY_KINDS + ("other_shot",):
                    rows = [n for n, k in enumerate(kinds) if k == kind]
                    joined = sum(found[n] == found[original_of[scene_of[n]]] for n in rows)
                    by_kind.append(f"{kind.replace('_', ' ')} {joined}/{len(rows)}")
                shots = [found[n] for n, k in enumerate(kinds) if k == "screenshot_alone"]
                by_kind.append(f"chat screenshots grouped with another {len(shots) - len(set(shots))}/{len(shots)}")
                chosen = " (clipdex's)" if (bits, detail_bits) == (LOOKALIKE_BITS, DETAIL_BITS) else ""
                rule = f"{bits} + {detail_bits} bits" if detail_bits < 256 else f"{bits} bits, unconfirmed"
                report.add(f"{rule}{chosen}: pair F1", round(f1(precision, recall), 3),
                           round(f1(*chained), 3),
                           note=f"precision {precision:.3f}, recall {recall:.3f} (chains: {chained[0]:.3f}, "
                                f"{chained[1]:.3f}); with their original: {', '.join(by_kind)}")
            # Speed: random hashes (nearly all apart, so each becomes a group's first image, the
            # most a new photo is compared with), grouped from scratch; then 1,000 new photos
            # beside a library of ``--library`` groups.
            rng = np.random.default_rng(args.seed)
            conn.execute("DELETE FROM images")
            _store(conn, _random_looks(rng, args.scale), start=10_000_000)
            t = time.perf_counter()
            group_new_images(conn)
            seconds = time.perf_counter() - t
            report.add(f"grouping {args.scale:,} photos from scratch", round(args.scale / seconds), unit="photos/s")
            conn.execute("DELETE FROM images")
            _store(conn, _random_looks(rng, args.library), start=20_000_000, grouped=True)
            _store(conn, _random_looks(rng, 1000), start=40_000_000)
            t = time.perf_counter()
            group_new_images(conn)
            report.add(f"1,000 new photos beside {args.library:,} groups", round(time.perf_counter() - t, 3),
                       unit="ms per photo", higher_is_better=False, note="loading the groups' first images included")
    report.emit(args.json)
    return report


def f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / max(1e-9, precision + recall)


def chains(looks: list[int | None], bits: int) -> list[int]:
    """The simplest grouping: every two photos within ``bits`` join (connected components), so
    a chain of small differences joins photos far apart."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    known = [n for n, look in enumerate(looks) if look is not None]
    values = np.array([looks[n] for n in known], dtype=np.int64).view(np.uint64)
    rows, cols = [], []
    for a in range(len(values)):
        distance = np.bitwise_count(values[a] ^ values[a + 1:])
        for b in np.nonzero(distance <= bits)[0]:
            rows.append(known[a])
            cols.append(known[a + 1 + int(b)])
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(looks), len(looks)))
    return list(connected_components(graph, directed=False)[1])


def _random_looks(rng: np.random.Generator, count: int) -> list[Row]:
    return [(int(v), rng.bytes(32), 1.0, 100, 100) for v in rng.integers(-2**63, 2**63 - 1, count, dtype=np.int64)]


if __name__ == "__main__":
    main()
