"""Search benchmark: clipdex's SQL path (bounded count, then exact sort or HNSW) against brute force.

    python -m bench.search [--n 100000] [--dim 512] [--queries 200] [--home DIR] [--keep] [--smoke]
                           [--json OUT]

On an embedded PostgreSQL of its own (CLIPDEX_HOME = --home, or a folder under /tmp):

1. a fresh database with the real migrations; n synthetic images (bench/synthetic.py) loaded by
   binary COPY, then the model's HNSW index built and timed on its own; index and table sizes;
2. for the unfiltered case and each filter of synthetic.SELECTIVITY_FILTERS, with two query
   models (off the data: near a random moment; text-like: far from every image, as a text
   tower's outputs are): latency p50/p95 of clipdex.search.ranked_ids (k=10), recall@10 against
   the exact answer (mean and the lowest of any query), which strategy ran;
3. the baseline (the seed's method): brute-force cosine in numpy over every vector read from
   PostgreSQL (binary COPY), the filter as a boolean mask read in the same COPY; per query with
   that load (what the seed paid per query) and without it (numpy alone);
4. --clients connections (8) searching at once for --clients-seconds: QPS, p50, p95;
5. GET /api/search over HTTP against `clipdex serve`, with a random-weight local-dir: model of the
   same dimension whose key the synthetic vectors are stored under: new texts and cached texts;
6. the issue's targets at 1M rows: p50 <= 10 ms, p95 <= 25 ms, recall@10 >= 0.95 in every case, >= 500x
   brute force with its load; EXPLAIN (ANALYZE, BUFFERS) of a slow query where one is missed.

With --keep the home folder and the database (named after n, dim and seed) stay, and the next run
with the same n and dim reuses them, so a 1M-row table is built once. --smoke: 3,000 rows of 64-d,
a few queries, well under a minute.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psycopg
from pgvector import HalfVector

from bench import synthetic
from bench.report import Report, git_revision, percentile, server_versions
from clipdex import database, embedded_postgres, vector_cells
from clipdex.search import Filters, ranked_ids
from clipdex.search.plan import ef_search_for
from clipdex.vocabulary import CELL_PROBES, CELLS_FROM, EF_SEARCH as DEFAULT_EF_SEARCH

log = logging.getLogger("bench.search")

REPO = Path(__file__).resolve().parent.parent
K = 10
SEED = 0
GENERATOR = 2      # bumped when bench/synthetic.py draws other vectors: a kept database is not reused
BUILD_MEMORY = "4GB"              # maintenance_work_mem of the session that builds the index
BUILD_WORKERS = max(1, min((os.cpu_count() or 2) - 1, 7))
TARGET_P50_MS = 10.0
TARGET_P95_MS = 25.0
TARGET_BUILD_S = 150.0
TARGET_RECALL = 0.95
TARGET_RATIO = 500.0
TARGET_ROWS = 1_000_000           # the targets are stated for this many rows
EF_SEARCH = DEFAULT_EF_SEARCH   # --ef-search
TIE_TOLERANCE = 1e-5              # a returned row this close to the k-th exact distance is a hit
CASES: dict[str, dict[str, list[str]]] = {"unfiltered": {}, **synthetic.SELECTIVITY_FILTERS}
WORDS = ("red car beach sunset dog cat mountain snow night city street portrait food cake "
         "birthday party river forest bridge tower church boat sea harbour train station market "
         "flower garden child baby bicycle rain fog lake tree house window door kitchen table "
         "book screenshot receipt document mirror selfie wedding dress concert stage lights "
         "airport plane cloud sky moon stars desert camel horse bird duck park bench fountain "
         "museum painting statue temple lantern festival fireworks pizza noodles coffee tea cup").split()


class BenchConnection(psycopg.Connection):
    """A connection that can record the statements it runs (to EXPLAIN what ranked_ids ran)."""

    recorded: list | None = None

    def execute(self, query, params=None, *args, **kwargs):
        if self.recorded is not None:
            self.recorded.append((query, params))
        return super().execute(query, params, *args, **kwargs)


def connect(url: str, *, autocommit: bool = True, **kwargs) -> BenchConnection:
    """psycopg's defaults otherwise (prepare_threshold 5), as the web app's pool."""
    from pgvector.psycopg import register_vector

    conn = BenchConnection.connect(url, autocommit=autocommit, **kwargs)
    register_vector(conn)
    return conn


# --- the library --------------------------------------------------------------------------------


@dataclass
class Library:
    name: str
    url: str
    model_key: str
    model_id: int
    n: int
    dim: int
    centers: np.ndarray
    timings: dict[str, float]     # seconds: migrate, load, build, vacuum
    notices: list[str]
    reused: bool = False


def with_database(url: str, name: str) -> str:
    return url.replace(f"/{embedded_postgres.DATABASE_NAME}?", f"/{name}?", 1)


def model_folder(home: Path, dim: int) -> tuple[Path, str]:
    """A random-weight open_clip model whose embed_dim is `dim`, and its clipdex model key."""
    from clipdex.model import ModelSpec
    from tests.tiny_model import TINY_MODEL_CFG, write_model_folder

    folder = home / f"model-d{dim}"
    if not (folder / "open_clip_config.json").exists():
        write_model_folder(folder, {**TINY_MODEL_CFG, "embed_dim": dim})
    return folder, ModelSpec(f"local-dir:{folder}").key()


def build_library(base_url: str, home: Path, n: int, dim: int, model_key: str, keep: bool,
                  cells_from: int = CELLS_FROM) -> Library:
    cells = vector_cells.cells_for(n) if n >= cells_from else 0
    name = f"bench_search_n{n}_d{dim}_s{SEED}_g{GENERATOR}" + (f"_c{cells}" if cells else "")
    url = with_database(base_url, name)
    meta_path, centers_path = home / f"{name}.json", home / f"{name}-centers.npy"
    if keep and meta_path.exists() and centers_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta["model_key"] == model_key and _rows(base_url, name, meta["model_id"]) == n:
            log.info("reusing database %s (%d rows, built %s)", name, n, meta["built"])
            return Library(name, url, model_key, meta["model_id"], n, dim, np.load(centers_path),
                           meta["timings"], meta["notices"], reused=True)
    meta_path.unlink(missing_ok=True)
    with psycopg.connect(base_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    timings: dict[str, float] = {}
    start = time.perf_counter()
    database.upgrade(url)
    timings["migrate"] = time.perf_counter() - start

    notices: list[str] = []
    with connect(url, autocommit=False) as conn:
        conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        log.info("loading %d rows of %d-d (synthetic.create)", n, dim)
        start = time.perf_counter()
        data = synthetic.create(conn, n, dim, seed=SEED, model_key=model_key, build_index=False)
        conn.commit()
        timings["load"] = time.perf_counter() - start
        if vector_cells.has_any_index(conn, data.model_id):
            log.warning("the index already exists after the load: the load time includes its build")
        log.info("building the HNSW index (maintenance_work_mem %s, %d parallel workers)",
                 BUILD_MEMORY, BUILD_WORKERS)
        conn.execute(f"SET maintenance_work_mem = '{BUILD_MEMORY}'")
        conn.execute(f"SET max_parallel_maintenance_workers = {BUILD_WORKERS}")
        notices.clear()         # keep what the build says (e.g. the graph outgrew maintenance_work_mem)
        conn.commit()
        start = time.perf_counter()
        if cells:   # what model_registry.build_vector_index does after a bulk load, timed in two parts
            vector_cells.draw(conn, data.model_id, cells)
        timings["cells"], timings["cell_count"] = time.perf_counter() - start, cells
        start = time.perf_counter()
        conn.execute("SELECT clipdex_ensure_vector_index(%s::smallint)", (data.model_id,))
        conn.commit()
        timings["build"] = time.perf_counter() - start
        build_notices = list(notices)
        centers, model_id = data.centers, data.model_id
        del data
    # What autovacuum does soon after a bulk load (visibility map for index-only scans, hints).
    with psycopg.connect(url, autocommit=True) as conn:
        start = time.perf_counter()
        conn.execute("VACUUM (ANALYZE) images, embeddings")
        timings["vacuum"] = time.perf_counter() - start
    if keep:
        np.save(centers_path, centers)
        meta_path.write_text(json.dumps({"model_key": model_key, "model_id": model_id, "timings": timings,
                                         "notices": build_notices, "built": time.strftime("%Y-%m-%d %H:%M")}))
    return Library(name, url, model_key, model_id, n, dim, centers, timings, build_notices)


def _rows(base_url: str, name: str, model_id: int) -> int | None:
    try:
        with psycopg.connect(with_database(base_url, name)) as conn:
            if conn.execute("SELECT clipdex_vector_index_missing(%s::smallint)", (model_id,)).fetchone()[0]:
                return None
            return conn.execute("SELECT count(*) FROM embeddings WHERE model_id = %s", (model_id,)).fetchone()[0]
    except psycopg.OperationalError:
        return None


def sizes(conn, model_id: int) -> dict[str, float]:
    mib = 2.0 ** 20
    row = conn.execute(
        "WITH hnsw AS (SELECT coalesce(sum(pg_relation_size(c.oid)), 0)::bigint AS size FROM pg_class c "
        "  WHERE c.relkind = 'i' AND c.relname ~ %s) "
        "SELECT hnsw.size, pg_table_size('embeddings'), pg_table_size('images'), "
        "pg_indexes_size('images') + pg_indexes_size('embeddings') - hnsw.size FROM hnsw",
        (vector_cells.index_names(model_id),)).fetchone()
    return {"index": row[0] / mib, "embeddings": row[1] / mib, "images": row[2] / mib, "btrees": row[3] / mib}


# --- queries ----------------------------------------------------------------------------------


def query_vectors(centers: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Unit vectors near random scenes of the synthetic data (as tests/test_search.py's query_near)."""
    rng = np.random.default_rng(seed)
    q = centers[rng.integers(0, len(centers), count)] + rng.normal(scale=0.05, size=(count, centers.shape[1]))
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def text_like_vectors(centers: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Unit vectors drawn as a text tower's outputs are: far from every image (cosine about 0.28
    to the best match, 0.26 to the 10th, about 0 to most), most of their length along the
    modality gap (synthetic.modality_gap: the same for every query, a direction the photos do not
    vary along), the rest towards a random moment, with noise of half its length."""
    rng = np.random.default_rng(seed)
    dim = centers.shape[1]
    q = (0.3 * centers[rng.integers(0, len(centers), count)] + 0.9 * synthetic.modality_gap(dim)
         + rng.normal(scale=0.02, size=(count, dim)))
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


QUERY_MODELS = {"off the data": query_vectors, "text-like": text_like_vectors}


def query_arg(conn, lib: Library, q: np.ndarray):
    """What ranked_ids takes for a query: the vector as the database compares it (float16)."""
    return q.astype(np.float16).astype(np.float32)


@dataclass
class Case:
    label: str
    filters: Filters
    query_model: str = "off the data"
    latencies_ms: list[float] = field(default_factory=list)
    answers: list[list[tuple[int, float]]] = field(default_factory=list)
    strategies: Counter = field(default_factory=Counter)
    filtered: int | None = None    # as ranked_ids counted them (capped)
    keep: int | None = None        # rows the filter keeps (from the baseline's mask)
    recall: list[float] = field(default_factory=list)          # ties within TIE_TOLERANCE count
    recall_strict: list[float] = field(default_factory=list)   # the exact (distance, id) top-k
    load_s: list[float] = field(default_factory=list)          # baseline: COPY + parse
    numpy_ms: list[float] = field(default_factory=list)        # baseline: dot + mask + argpartition
    sql_check: list[float] = field(default_factory=list)       # numpy truth vs SQL exact sort

    @property
    def p50(self) -> float:
        return percentile(self.latencies_ms, 50)

    @property
    def baseline_ms(self) -> float:
        return float(np.median(self.load_s)) * 1000 + percentile(self.numpy_ms, 50)


def run_clipdex(conn, lib: Library, case: Case, query_args: list, warm_args: list, iterative: bool) -> None:
    for query in warm_args:
        ranked_ids(conn, lib.model_id, lib.dim, query, case.filters, K, None, iterative=iterative,
                   ef_search=EF_SEARCH)
    for query in query_args:
        start = time.perf_counter()
        rows, strategy, filtered = ranked_ids(conn, lib.model_id, lib.dim, query, case.filters, K, None,
                                              iterative=iterative, ef_search=EF_SEARCH)
        case.latencies_ms.append((time.perf_counter() - start) * 1000)
        case.answers.append(rows)
        case.strategies[strategy] += 1
        case.filtered = filtered


# --- the baseline: every vector out of PostgreSQL, then numpy ---------------------------------------


def load_vectors(conn, model_id: int, dim: int, filters: Filters) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, unit float32 vectors, filter mask) of every vector of the model, by one binary COPY."""
    if filters.active:
        where = psycopg.ClientCursor(conn).mogrify(*filters.sql())
        select = (f"SELECT e.image_id, e.embedding, coalesce(({where}), false) FROM embeddings e "
                  f"JOIN images i ON i.id = e.image_id WHERE e.model_id = {int(model_id)}")
    else:
        select = f"SELECT e.image_id, e.embedding, true FROM embeddings e WHERE e.model_id = {int(model_id)}"
    buf = bytearray()
    with conn.cursor().copy(f"COPY ({select}) TO STDOUT (FORMAT BINARY)") as copy:
        for block in copy:
            buf += block
    if buf[:11] != b"PGCOPY\n\xff\r\n\x00":
        raise RuntimeError("not a binary COPY stream")
    offset = 19 + int.from_bytes(buf[15:19], "big")
    # Per row: field count, then (length, bytes) per field. halfvec's binary form is int16 dim,
    # int16 unused, then dim big-endian halves.
    row = np.dtype([("fields", ">i2"), ("l1", ">i4"), ("id", ">i8"), ("l2", ">i4"), ("dim", ">i2"),
                    ("unused", ">i2"), ("v", ">f2", (dim,)), ("l3", ">i4"), ("mask", "u1")])
    count, rest = divmod(len(buf) - offset - 2, row.itemsize)
    if rest or buf[-2:] != b"\xff\xff":
        raise RuntimeError(f"unexpected binary COPY layout ({rest} stray bytes)")
    rec = np.frombuffer(buf, dtype=row, count=count, offset=offset)
    if count and not ((rec["fields"] == 3).all() and (rec["dim"] == dim).all()):
        raise RuntimeError("unexpected binary COPY rows")
    vectors = rec["v"].astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return rec["id"].astype(np.int64), vectors, rec["mask"].astype(bool)


def brute_force(vectors: np.ndarray, mask: np.ndarray | None, q: np.ndarray, k: int) -> np.ndarray:
    """Row numbers of the k best by cosine (the seed's method)."""
    scores = vectors @ q
    if mask is not None:
        scores = np.where(mask, scores, -np.inf)
    top = np.argpartition(-scores, k)[:k]
    return top[np.argsort(-scores[top], kind="stable")]


def score_recall(case: Case, ids: np.ndarray, vectors: np.ndarray, mask: np.ndarray, queries: np.ndarray) -> None:
    """Recall@k of clipdex's answers against the exact answer over the same rows.

    The truth ranks by the distance PostgreSQL computes: the query as stored (float16), cosine
    distance, ties by id. A returned row whose exact distance is within TIE_TOLERANCE of the k-th
    best counts as a hit (float rounding can swap near-ties); `recall_strict` does not allow that.
    """
    order = np.argsort(ids)
    sorted_ids = ids[order]
    q16 = queries.astype(np.float16).astype(np.float32)
    q16 /= np.linalg.norm(q16, axis=1, keepdims=True)
    keep = int(mask.sum())
    k = min(K, keep)
    for start in range(0, len(q16), 32):
        scores = vectors @ q16[start:start + 32].T
        for j in range(scores.shape[1]):
            answer = case.answers[start + j]
            if k == 0:
                case.recall.append(1.0 if not answer else 0.0)
                case.recall_strict.append(case.recall[-1])
                continue
            distance = 1.0 - scores[:, j].astype(np.float64)
            distance[~mask] = np.inf
            kth = np.partition(distance, k - 1)[k - 1]
            near = np.flatnonzero(distance <= kth + TIE_TOLERANCE)
            exact = set(ids[near[np.lexsort((ids[near], distance[near]))][:k]].tolist())
            got = np.array([i for i, _ in answer], dtype=np.int64)
            rows = order[np.searchsorted(sorted_ids, got)] if len(got) else np.array([], dtype=np.int64)
            hits = int((distance[rows] <= kth + TIE_TOLERANCE).sum()) if len(rows) else 0
            case.recall.append(min(hits, k) / k)
            case.recall_strict.append(len(exact & set(got.tolist())) / k)


def run_baseline(conn, lib: Library, same_filter: list[tuple[Case, np.ndarray]], numpy_queries: int, reps: int,
                 truth_checks: int) -> None:
    """The baseline for one filter (timed once, with the first query model's queries), and the
    recall of every query model's answers under that filter."""
    first, queries = same_filter[0]
    for _ in range(reps):
        start = time.perf_counter()
        ids, vectors, mask = load_vectors(conn, lib.model_id, lib.dim, first.filters)
        first.load_s.append(time.perf_counter() - start)
    use_mask = mask if first.filters.active else None
    for q in queries[:numpy_queries]:
        start = time.perf_counter()
        ids[brute_force(vectors, use_mask, q, K)]
        first.numpy_ms.append((time.perf_counter() - start) * 1000)
    for case, queries in same_filter:
        case.keep = int(mask.sum())
        case.load_s, case.numpy_ms = first.load_s, first.numpy_ms
        score_recall(case, ids, vectors, mask, queries)
        # The numpy truth against PostgreSQL's own exact sort, scored as clipdex's answers are.
        truth = Case(case.label, case.filters)
        truth.answers = [[(i, 0.0) for i in exact_sql(conn, lib.model_id, q, case.filters, K)]
                         for q in queries[:truth_checks]]
        score_recall(truth, ids, vectors, mask, queries[:truth_checks])
        case.sql_check = truth.recall


def exact_sql(conn, model_id: int, query: np.ndarray, filters: Filters, k: int) -> list[int]:
    """The exact answer written independently of the core: a full sort, index scans off."""
    where, params = filters.sql()
    with conn.transaction():
        conn.execute("SET LOCAL enable_indexscan = off")
        rows = conn.execute(
            f"SELECT e.image_id FROM embeddings e JOIN images i ON i.id = e.image_id "
            f"WHERE e.model_id = %s AND {where} ORDER BY e.embedding <=> %s::halfvec, e.image_id LIMIT %s",
            [model_id, *params, HalfVector(query), k]).fetchall()
    return [r[0] for r in rows]


# --- EXPLAIN ----------------------------------------------------------------------------------


VECTOR_LITERAL = re.compile(r"'\[[-+0-9.e,]{200,}\]'")


def explain(conn, lib: Library, case: Case, query, iterative: bool) -> str:
    """EXPLAIN (ANALYZE, BUFFERS) of every statement ranked_ids runs for one query, with its SETs."""
    conn.recorded = []
    try:
        ranked_ids(conn, lib.model_id, lib.dim, query, case.filters, K, None, iterative=iterative,
                   ef_search=EF_SEARCH)
        statements = conn.recorded
    finally:
        conn.recorded = None
    lines = []
    with conn.transaction():
        for sql, params in statements:
            text = " ".join(str(sql).split())
            if text.upper().startswith("SET"):
                conn.execute(sql, params)
                lines.append(text + ";")
            elif text.upper().startswith("SELECT") and "pg_class" not in text:
                shown = [p if not isinstance(p, HalfVector) else "<query vector>" for p in params or ()]
                lines.append(psycopg.ClientCursor(conn).mogrify(sql, shown) + ";")
                plan = conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params, prepare=False).fetchall()
                lines += ["  " + VECTOR_LITERAL.sub("'[…]'", r[0]) for r in plan]
    return "\n".join(lines)


# --- HTTP ------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def phrases(count: int, rng: np.random.Generator, taken: set[str]) -> list[str]:
    out: list[str] = []
    while len(out) < count:
        text = " ".join(rng.choice(WORDS, rng.integers(2, 5), replace=False))
        if text not in taken:
            taken.add(text)
            out.append(text)
    return out


def http_get(port: int, path: str) -> tuple[float, dict]:
    start = time.perf_counter()
    client = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        client.request("GET", path)
        response = client.getresponse()
        body = response.read()
    finally:
        client.close()
    elapsed = (time.perf_counter() - start) * 1000
    if response.status != 200:
        raise RuntimeError(f"GET {path}: HTTP {response.status}: {body[:300]!r}")
    return elapsed, json.loads(body)


@dataclass
class Concurrent:
    clients: int
    seconds: float
    latencies_ms: list[float]

    @property
    def qps(self) -> float:
        return len(self.latencies_ms) / self.seconds


def run_concurrent(lib: Library, cases: list[Case], queries: list, clients: int, seconds: float,
                   iterative: bool) -> Concurrent:
    """`clients` connections searching at once (as the web app's pool under load), each cycling
    through every case with its own order of the queries, for `seconds`: QPS and latency."""
    import threading

    latencies: list[list[float]] = [[] for _ in range(clients)]
    ready = threading.Barrier(clients + 1)
    stop = threading.Event()

    def client(number: int) -> None:
        rng = np.random.default_rng(100 + number)
        with connect(lib.url) as conn:
            ranked_ids(conn, lib.model_id, lib.dim, queries[0], cases[0].filters, K, None, iterative=iterative,
                       ef_search=EF_SEARCH)
            ready.wait()
            turn = 0
            while not stop.is_set():
                case = cases[turn % len(cases)]
                query = queries[int(rng.integers(len(queries)))]
                start = time.perf_counter()
                ranked_ids(conn, lib.model_id, lib.dim, query, case.filters, K, None, iterative=iterative,
                           ef_search=EF_SEARCH)
                latencies[number].append((time.perf_counter() - start) * 1000)
                turn += 1

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    ready.wait()
    began = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return Concurrent(clients, time.perf_counter() - began, [x for per in latencies for x in per])


@dataclass
class HttpResult:
    first_ms: float
    new_ms: list[float]
    cached_ms: list[float]
    strategies: Counter
    page_sizes: Counter


def run_http(home: Path, url: str, model_dir: Path, count: int, seed: int) -> HttpResult:
    from clipdex.config import Settings

    port = free_port()
    settings = Settings(home=home, database_url=url, model=f"local-dir:{model_dir}", device="cpu",
                        offline=True, web_port=port, ef_search=EF_SEARCH)
    log_path = home / "serve.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "clipdex.cli", "serve", "--threads", "4"],
                                env=settings.child_environ(), stdout=log_file, stderr=subprocess.STDOUT,
                                cwd=REPO)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"clipdex serve exited ({proc.returncode}):\n{log_path.read_text()[-2000:]}")
            try:
                http_get(port, "/healthz")
                break
            except (OSError, RuntimeError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"clipdex serve did not answer:\n{log_path.read_text()[-2000:]}")
                time.sleep(0.2)
        rng = np.random.default_rng(seed)
        taken: set[str] = set()

        def search(text: str) -> float:
            ms, body = http_get(port, "/api/search?" + urllib.parse.urlencode({"q": text, "limit": 20}))
            result.strategies[body["strategy"]] += 1
            result.page_sizes[len(body["results"])] += 1
            return ms

        result = HttpResult(0.0, [], [], Counter(), Counter())
        result.first_ms = search(phrases(1, rng, taken)[0])     # loads the model, opens the pool
        texts = phrases(count, rng, taken)
        result.new_ms = [search(t) for t in texts]
        rng.shuffle(texts)
        result.cached_ms = [search(t) for t in texts]
        return result
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- the run ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.search", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="images (default 100,000)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=200, help="timed queries per case")
    parser.add_argument("--ef-search", type=int, default=DEFAULT_EF_SEARCH,
                        help="the least hnsw.ef_search (CLIPDEX_EF_SEARCH), default %(default)s")
    parser.add_argument("--home", help="CLIPDEX_HOME of the embedded server (default: a folder under /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep and reuse the home folder and database")
    parser.add_argument("--smoke", action="store_true", help="3,000 rows of 64-d, a few queries")
    parser.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    parser.add_argument("--cells-from", type=int, default=CELLS_FROM,
                        help="split the vectors into cells from this many (CLIPDEX_CELLS_FROM), default %(default)s")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--clients-seconds", type=float, default=20.0, help="how long they search")
    args = parser.parse_args(argv)
    global EF_SEARCH
    EF_SEARCH = args.ef_search
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    log.setLevel(logging.INFO)
    if args.smoke:
        args.n, args.dim, args.queries = 3000, 64, min(args.queries, 20)
        args.clients_seconds = min(args.clients_seconds, 2.0)
    warmups = min(20, max(2, args.queries // 10))
    numpy_queries = min(args.queries, 20)
    http_queries = min(args.queries, 10 if args.smoke else 100)
    reps = 2
    truth_checks = 2

    began = time.perf_counter()
    if args.home:
        home, temporary = Path(args.home).expanduser().resolve(), False
    elif args.keep:
        home, temporary = Path(tempfile.gettempdir()) / "clipdex-bench-search", False
    else:
        home, temporary = Path(tempfile.mkdtemp(prefix="clipdex-bench-search-")), True
    home.mkdir(parents=True, exist_ok=True)
    log.info("CLIPDEX_HOME %s", home)
    lib = None
    base_url = embedded_postgres.server_url(home)
    try:
        model_dir, model_key = model_folder(home, args.dim)
        lib = build_library(base_url, home, args.n, args.dim, model_key, args.keep, args.cells_from)
        report = run(args, home, lib, model_dir, warmups, numpy_queries, http_queries, reps, truth_checks)
        report["facts"]["run time"] = f"{time.perf_counter() - began:.0f} s"
        emit(report, args.json)
        return 0
    finally:
        if lib is not None and not args.keep and not temporary:
            with psycopg.connect(base_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{lib.name}" WITH (FORCE)')
        embedded_postgres.stop(home)
        if temporary:
            shutil.rmtree(home, ignore_errors=True)


def warm_files(conn) -> tuple[int, float]:
    """Reads the files of the tables a search reads, and of their indexes, once: the pages come
    from memory in every timed query, not from disk in the first ones. (A kept database's files
    leave the OS cache between runs: this machine reclaims cold pages, so the first cases of a run
    measured up to 1.5 times slower than the same cases minutes later.) A server whose data folder
    this process cannot read is left as it is. Returns bytes read and seconds."""
    began, read = time.perf_counter(), 0
    try:
        data_dir = Path(conn.execute("SHOW data_directory").fetchone()[0])
    except psycopg.Error:
        return 0, 0.0
    rows = conn.execute(
        "SELECT pg_relation_filepath(c.oid) FROM pg_class c WHERE c.oid IN "
        "('embeddings'::regclass, 'images'::regclass, 'locations'::regclass) OR c.oid IN (SELECT i.indexrelid "
        "FROM pg_index i WHERE i.indrelid IN ('embeddings'::regclass, 'images'::regclass, 'locations'::regclass))")
    for (relative,) in rows:
        first = data_dir / relative
        for segment in [first, *sorted(first.parent.glob(first.name + ".[0-9]*"))]:
            try:
                with open(segment, "rb") as f:
                    while chunk := f.read(8 << 20):
                        read += len(chunk)
            except OSError:
                continue
    return read, time.perf_counter() - began


def run(args, home: Path, lib: Library, model_dir: Path, warmups: int, numpy_queries: int,
        http_queries: int, reps: int, truth_checks: int) -> dict:
    query_sets = {name: make(lib.centers, args.queries, seed=1) for name, make in QUERY_MODELS.items()}
    warm = query_vectors(lib.centers, warmups, seed=2)
    cases = [Case(label, Filters.parse(params), name) for name in QUERY_MODELS for label, params in CASES.items()]
    explains: list[str] = []
    with connect(lib.url) as conn:
        info = database.inspect_server(conn)
        versions = server_versions(conn)
        settings = {name: conn.execute(f"SHOW {name}").fetchone()[0] for name in (
            "shared_buffers", "work_mem", "hnsw.ef_search", "hnsw.iterative_scan", "hnsw.max_scan_tuples")}
        size = sizes(conn, lib.model_id)
        warmed, warm_s = warm_files(conn)
        log.info("read %.0f MiB of the search's files in %.1f s (warm cache)", warmed / 2**20, warm_s)
        query_args = {name: [query_arg(conn, lib, q) for q in qs] for name, qs in query_sets.items()}
        warm_args = [query_arg(conn, lib, q) for q in warm]
        for case in cases:
            log.info("clipdex: %s, %s queries (%d after %d warm-up)", case.label, case.query_model,
                     len(query_args[case.query_model]), len(warm_args))
            run_clipdex(conn, lib, case, query_args[case.query_model], warm_args, info.iterative_scan)
        for label in CASES:
            same_filter = [(c, query_sets[c.query_model]) for c in cases if c.label == label]
            log.info("baseline: %s (%d loads, %d numpy queries), recall, truth vs SQL (%d queries)",
                     label, reps, numpy_queries, truth_checks)
            run_baseline(conn, lib, same_filter, numpy_queries, reps, truth_checks)
        slow = max(cases, key=lambda c: c.p50)
        if slow.p50 > TARGET_P50_MS:
            at = int(np.argsort(slow.latencies_ms)[int(0.95 * (len(slow.latencies_ms) - 1))])
            explains.append(f"-- slowest case {slow.label}, {slow.query_model}: query {at} "
                            f"({slow.latencies_ms[at]:.1f} ms when timed)\n"
                            + explain(conn, lib, slow, query_args[slow.query_model][at], info.iterative_scan))
        worst = min(cases, key=lambda c: np.mean(c.recall))
        if np.mean(worst.recall) < TARGET_RECALL:
            at = int(np.argmin(worst.recall))
            explains.append(f"-- lowest recall case {worst.label}, {worst.query_model}: query {at} "
                            f"(recall {worst.recall[at]:.2f})\n"
                            + explain(conn, lib, worst, query_args[worst.query_model][at], info.iterative_scan))
    log.info("%d concurrent clients for %g s", args.clients, args.clients_seconds)
    concurrent = run_concurrent(lib, [c for c in cases if c.query_model == "off the data"],
                                query_args["off the data"], args.clients, args.clients_seconds, info.iterative_scan)
    log.info("HTTP: GET /api/search, %d new texts then the same texts cached", http_queries)
    web = run_http(home, lib.url, model_dir, http_queries, seed=3)
    return assemble(args, lib, cases, web, concurrent, size, versions, settings, explains)


def assemble(args, lib: Library, cases: list[Case], web: HttpResult, concurrent: Concurrent, size: dict,
             versions: dict, settings: dict, explains: list[str]) -> dict:
    report = Report(f"Search: {lib.n:,} synthetic images, {lib.dim}-d halfvec, k={K}",
                    "numpy brute force (PG load + dot)")
    report.facts.update(versions)
    report.facts.update({
        "revision": git_revision(),
        "queries": f"{args.queries} per case and query model (off the data: near a random moment; text-like: "
                   "far from every image), after warm-up queries, on one connection with psycopg's defaults, "
                   "as the web app's pool",
        "search settings": f"ef_search at least {EF_SEARCH}, "
                           f"{ef_search_for(lib.n / max(1, lib.timings.get('cell_count', 0)), EF_SEARCH)} at this size"
                           + (f", {CELL_PROBES} of {lib.timings['cell_count']:.0f} cells walked" if lib.timings.get("cell_count") else "")
                           + " "
                           "(clipdex.search.plan.ef_search_for; the database default: "
                           + ", ".join(f"{k} {v}" for k, v in settings.items()) + ")",
        "index build": f"maintenance_work_mem {BUILD_MEMORY}, max_parallel_maintenance_workers {BUILD_WORKERS}",
        "database": lib.name + (" (reused: build figures are from its first run)" if lib.reused else ""),
    })
    t = lib.timings
    report.add("load: synthetic.create (generate + binary COPY + ANALYZE)", t["load"], unit="s",
               note=f"{lib.n / t['load']:,.0f} rows/s; migrations {t['migrate']:.1f} s")
    cells = int(t.get("cell_count", 0))
    if cells:
        report.add(f"cells drawn: k-means + each vector's cell ({cells} cells, clipdex.vector_cells.draw)",
                   t["cells"], unit="s")
    report.add("HNSW build (clipdex_ensure_vector_index)" + (", one graph per cell" if cells else ""), t["build"],
               unit="s", note=f"{lib.n / t['build']:,.0f} rows/s; then VACUUM ANALYZE {t['vacuum']:.1f} s"
               + ("; " + "; ".join(sorted(set(lib.notices))) if lib.notices else ""))
    report.add("HNSW index size", size["index"], unit="MiB", note=f"{size['index'] * 2**20 / lib.n:,.0f} B/row")
    report.add("table size: embeddings / images", f"{size['embeddings']:,.0f} / {size['images']:,.0f}",
               unit="MiB", note=f"B-tree indexes {size['btrees']:,.0f} MiB")
    for c in cases:
        strategies = ", ".join(f"{s}×{n}" for s, n in sorted(c.strategies.items()))
        np50 = percentile(c.numpy_ms, 50)
        load = float(np.median(c.load_s)) * 1000
        report.add(f"SQL p50, {c.label}, {c.query_model}", c.p50, c.baseline_ms, unit="ms", higher_is_better=False,
                   note=f"p95 {percentile(c.latencies_ms, 95):.1f} ms; {strategies}; baseline = load "
                        f"{load:,.0f} + numpy {np50:.1f} ms (numpy alone: {times(np50 / c.p50)})")
        report.add(f"recall@{K}, {c.label}, {c.query_model}", float(np.mean(c.recall)), "1 (exact)",
                   note=f"min {min(c.recall):.2f}; strict {np.mean(c.recall_strict):.3f}; "
                        f"truth vs SQL exact {np.mean(c.sql_check):.2f}; {c.keep:,} rows match")
    report.add(f"{concurrent.clients} concurrent clients: QPS", concurrent.qps, unit="queries/s",
               note=f"p50 {percentile(concurrent.latencies_ms, 50):.1f} ms, p95 "
                    f"{percentile(concurrent.latencies_ms, 95):.1f} ms; every case in turn, off-the-data queries, "
                    f"{concurrent.seconds:.0f} s")
    pages = ", ".join(f"{n} pages of {size}" for size, n in sorted(web.page_sizes.items()))
    strategies = ", ".join(f"{s}×{n}" for s, n in sorted(web.strategies.items()))
    web_note = f"limit 20: {pages}; {strategies}; first call {web.first_ms:,.0f} ms (model load)"
    report.add("HTTP /api/search p50, cached text", percentile(web.cached_ms, 50), unit="ms",
               note=f"p95 {percentile(web.cached_ms, 95):.1f} ms")
    report.add("HTTP /api/search p50, new text (encode + SQL + JSON)", percentile(web.new_ms, 50), unit="ms",
               note=f"p95 {percentile(web.new_ms, 95):.1f} ms; {web_note}")
    verdicts = targets(lib.n, cases) + [
        f"- index build <= {TARGET_BUILD_S:g} s: " + ("met" if t["build"] + t.get("cells", 0) <= TARGET_BUILD_S else "MISSED")
        + f" ({t.get('cells', 0) + t['build']:.0f} s; load + build {t['load'] + t.get('cells', 0) + t['build']:.0f} s"
        + (", figures from the database's first run" if lib.reused else "") + ")"]
    return {"report": report, "facts": report.facts, "verdicts": verdicts, "explains": explains,
            "concurrent": {"clients": concurrent.clients, "qps": concurrent.qps,
                           "p50_ms": percentile(concurrent.latencies_ms, 50),
                           "p95_ms": percentile(concurrent.latencies_ms, 95)},
            "cases": {f"{c.label}, {c.query_model}": {
                "p50_ms": c.p50, "p95_ms": percentile(c.latencies_ms, 95),
                "recall": float(np.mean(c.recall)), "recall_min": min(c.recall),
                "recall_strict": float(np.mean(c.recall_strict)), "strategies": dict(c.strategies),
                "matching_rows": c.keep, "baseline_load_ms": float(np.median(c.load_s)) * 1000,
                "baseline_numpy_ms": percentile(c.numpy_ms, 50), "baseline_ms": c.baseline_ms,
                "ratio": c.baseline_ms / c.p50, "truth_vs_sql": float(np.mean(c.sql_check))}
                for c in cases},
            "http": {"first_ms": web.first_ms, "new_p50_ms": percentile(web.new_ms, 50),
                     "new_p95_ms": percentile(web.new_ms, 95), "cached_p50_ms": percentile(web.cached_ms, 50),
                     "cached_p95_ms": percentile(web.cached_ms, 95)},
            "timings_s": lib.timings, "sizes_mib": size}


def times(ratio: float) -> str:
    return f"{ratio:,.1f}×" if ratio >= 1 else f"{ratio:.2f}×"


def targets(n: int, cases: list[Case]) -> list[str]:
    scope = "" if n >= TARGET_ROWS else f" (the targets are for {TARGET_ROWS:,} rows; this run has {n:,})"
    lines = [f"Targets{scope}:"]

    def name(c: Case) -> str:
        return f"{c.label}, {c.query_model}"

    def verdict(what: str, value, limit: float, worse_when_higher: bool, fmt: str) -> str:
        worst = (max if worse_when_higher else min)(cases, key=value)
        missed = [c for c in cases if (value(c) > limit if worse_when_higher else value(c) < limit)]
        return (f"- {what}: " + ("met" if not missed else f"MISSED in {len(missed)} of {len(cases)} cases")
                + f" (worst: {name(worst)} {fmt.format(value(worst))}"
                + ("; missed: " + ", ".join(f"{name(c)} {fmt.format(value(c))}" for c in missed[:6])
                   + (f" and {len(missed) - 6} more" if len(missed) > 6 else "") if missed else "")
                + ")")

    lines.append(verdict(f"SQL p50 <= {TARGET_P50_MS:g} ms in every case", lambda c: c.p50, TARGET_P50_MS,
                         True, "{:.1f} ms"))
    lines.append(verdict(f"SQL p95 <= {TARGET_P95_MS:g} ms in every case",
                         lambda c: percentile(c.latencies_ms, 95), TARGET_P95_MS, True, "{:.1f} ms"))
    lines.append(verdict(f"recall@{K} >= {TARGET_RECALL} in every case", lambda c: float(np.mean(c.recall)),
                         TARGET_RECALL, False, "{:.3f}"))
    worst_query = min(cases, key=lambda c: min(c.recall))
    lines.append(f"- lowest recall@{K} of any one query: {min(worst_query.recall):.2f} ({name(worst_query)}; "
                 f"queries under 0.5: {sum(r < 0.5 for c in cases for r in c.recall)} of "
                 f"{sum(len(c.recall) for c in cases)})")
    lines.append(verdict(f">= {TARGET_RATIO:g}× brute force (with its load from PG)",
                         lambda c: c.baseline_ms / c.p50, TARGET_RATIO, False, "{:,.0f}×"))
    return lines


def emit(result: dict, json_path: str | None) -> None:
    result["report"].emit(json_path)
    print()
    print("\n".join(result["verdicts"]))
    for text in result["explains"]:
        print("\nEXPLAIN (ANALYZE, BUFFERS):\n" + text)
    sys.stdout.flush()
    if json_path:
        data = json.loads(Path(json_path).read_text())
        data.update({k: result[k] for k in ("verdicts", "explains", "cases", "http", "timings_s", "sizes_mib")})
        Path(json_path).write_text(json.dumps(data, indent=2, default=str))


if __name__ == "__main__":
    sys.exit(main())
