"""The query core: one search function behind the web page, the JSON API and ``clipdex search``.

A search is a query vector (texts, example images and negative texts, each with a weight, summed
and normalised) plus metadata filters, answered by plain SQL::

    WHERE <filters> ORDER BY embedding <=> q LIMIT k

Correct under filters is the point. When the filters keep few rows (exact_scan_limit: about
sqrt(3·k·N), a few thousand at a million photos) the page is an exact distance sort over exactly
those rows. Otherwise the model's HNSW index is
used with pgvector's iterative scan (strict order), so a selective filter still fills the page; on
pgvector 0.7, or if the index ever comes back short, the exact sort answers instead. Pages are
keyset-paginated on (distance, id) against a stored query vector, so "next page" neither skips nor
repeats a result.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from dataclasses import asdict, dataclass, field, fields
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import psycopg
from pgvector import HalfVector

from clipdex.database import Database
from clipdex.text import printable, unstorable_reason

MAX_PAGE = 200
DEFAULT_PAGE = 40
EXACT_SCAN_MIN_ROWS = 500      # bounds of the exact-sort threshold (see exact_scan_limit)
EXACT_SCAN_MAX_ROWS = 20_000
EF_SEARCH = 200                # default HNSW candidate list (CLIPDEX_EF_SEARCH; see BENCHMARKS.md)
SOURCES = ("takeout", "iphone", "qq", "folder")
FORMATS = {"jpeg": "jpeg", "jpg": "jpeg", "png": "png", "gif": "gif", "webp": "webp", "heif": "heif",
           "heic": "heif", "avif": "avif", "bmp": "bmp", "tiff": "tiff", "tif": "tiff"}
ORIENTATIONS = ("portrait", "landscape", "square")


class QueryError(ValueError):
    """The request cannot be answered as asked; the message says what to change (HTTP 400)."""


class NotFound(LookupError):
    """A referenced image or query does not exist (HTTP 404)."""


class Conflict(LookupError):
    """The thing exists but not as it was indexed: a file that changed on disk (HTTP 409)."""


# --- filters -----------------------------------------------------------------------------------


def _parse_bool(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise QueryError(f"{name}: expected true or false, got {value!r}")


def _parse_int(name: str, value: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise QueryError(f"{name}: expected a whole number, got {value!r}") from None
    if not low <= number <= high:
        raise QueryError(f"{name}: must be between {low} and {high}, got {number}")
    return number


def _parse_when(name: str, value: str, end: bool) -> datetime:
    """A date (whole day, inclusive) or an ISO date-time, in UTC; naive times are UTC. The last
    day Python knows (9999-12-31) ends at its last microsecond."""
    text = value.strip()
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            day = date.fromisoformat(text)
            if end and day == date.max:
                return datetime.max.replace(tzinfo=timezone.utc)
            return datetime.combine(day + timedelta(days=1) if end else day, time(), timezone.utc)
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return moment.astimezone(timezone.utc) if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    except OverflowError:
        raise QueryError(f"{name}: {value!r} is outside the dates clipdex can compare (years 1 to 9999)") from None
    except ValueError:
        raise QueryError(f"{name}: expected a date like 2023-07-31 or 2023-07-31T18:00, got {value!r}") from None


def check_text(name: str, value: str) -> str:
    """A parameter's text, or QueryError when PostgreSQL could not take it (NUL, broken Unicode)."""
    reason = unstorable_reason(value)
    if reason is not None:
        raise QueryError(f"{name}: {reason}")
    return value


def _split_values(values: Iterable[str]) -> list[str]:
    return [v.strip() for value in values for v in str(value).split(",") if v.strip()]


@dataclass(frozen=True)
class Filters:
    """Metadata filters, all combinable (AND)."""

    taken_from: datetime | None = None   # inclusive
    taken_to: datetime | None = None     # exclusive (a date means the whole day)
    source: tuple[str, ...] = ()
    album: tuple[str, ...] = ()
    min_width: int | None = None
    min_height: int | None = None
    orientation: str | None = None
    format: tuple[str, ...] = ()
    camera_make: str | None = None
    camera_model: str | None = None
    has_gps: bool | None = None
    bbox: tuple[float, float, float, float] | None = None   # south, west, north, east
    favorite: bool | None = None
    path: str | None = None              # "root/relative/prefix"

    NAMES = ("taken_from", "taken_to", "source", "album", "min_width", "min_height", "orientation",
             "format", "camera_make", "camera_model", "has_gps", "bbox", "favorite", "path")

    @classmethod
    def parse(cls, params: Mapping[str, Sequence[str]]) -> "Filters":
        """From request parameters (each a list of strings); unknown names are an error."""
        unknown = sorted(str(name) for name in set(params) - set(cls.NAMES))
        if unknown:
            raise QueryError(f"unknown filter {printable(unknown[0])!r}; filters are: {', '.join(cls.NAMES)}")
        for name, items in params.items():
            for item in items:
                check_text(name, str(item))
        values: dict[str, Any] = {}

        def one(name: str) -> str | None:
            items = [v for v in params.get(name, []) if str(v).strip()]
            if len(items) > 1:
                raise QueryError(f"{name}: give it once")
            return str(items[0]) if items else None

        if (v := one("taken_from")) is not None:
            values["taken_from"] = _parse_when("taken_from", v, end=False)
        if (v := one("taken_to")) is not None:
            values["taken_to"] = _parse_when("taken_to", v, end=True)
        if values.get("taken_from") and values.get("taken_to") and values["taken_from"] >= values["taken_to"]:
            raise QueryError("taken_from must be before taken_to")
        sources = _split_values(params.get("source", []))
        for s in sources:
            if s not in SOURCES:
                raise QueryError(f"source: {s!r} is not one of {', '.join(SOURCES)}")
        values["source"] = tuple(dict.fromkeys(sources))
        values["album"] = tuple(dict.fromkeys(a.strip() for a in params.get("album", []) if a.strip()))
        for name in ("min_width", "min_height"):
            if (v := one(name)) is not None:
                values[name] = _parse_int(name, v, 1, 1_000_000)
        if (v := one("orientation")) is not None:
            if v not in ORIENTATIONS:
                raise QueryError(f"orientation: {v!r} is not one of {', '.join(ORIENTATIONS)}")
            values["orientation"] = v
        formats = []
        for f in _split_values(params.get("format", [])):
            if f.lower() not in FORMATS:
                raise QueryError(f"format: {f!r} is not one of {', '.join(sorted(set(FORMATS.values())))}")
            formats.append(FORMATS[f.lower()])
        values["format"] = tuple(dict.fromkeys(formats))
        for name in ("camera_make", "camera_model"):
            if (v := one(name)) is not None:
                values[name] = v.strip()
        for name in ("has_gps", "favorite"):
            if (v := one(name)) is not None:
                values[name] = _parse_bool(name, v)
        if (v := one("bbox")) is not None:
            try:
                south, west, north, east = (float(x) for x in v.split(","))
            except ValueError:
                raise QueryError("bbox: expected south,west,north,east in degrees, e.g. 48.8,2.2,48.9,2.5") from None
            if not all(map(math.isfinite, (south, west, north, east))) or not (
                    -90 <= south <= north <= 90 and -180 <= west <= 180 and -180 <= east <= 180):
                raise QueryError("bbox: latitudes within -90..90 with south <= north, longitudes within -180..180")
            values["bbox"] = (south, west, north, east)
        if (v := one("path")) is not None:
            values["path"] = v.strip().strip("/")
        return cls(**values)

    def to_params(self) -> dict[str, list[str]]:
        """The inverse of parse, for cursors and links."""
        out: dict[str, list[str]] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or value == ():
                continue
            if isinstance(value, tuple) and f.name != "bbox":
                out[f.name] = list(value)
            elif f.name == "bbox":
                out[f.name] = [",".join(repr(x) for x in value)]
            elif isinstance(value, datetime):
                out[f.name] = [value.isoformat()]
            elif isinstance(value, bool):
                out[f.name] = ["true" if value else "false"]
            else:
                out[f.name] = [str(value)]
        return out

    @property
    def active(self) -> bool:
        return any(getattr(self, f.name) not in (None, ()) for f in fields(self))

    def sql(self) -> tuple[str, list[Any]]:
        """A WHERE fragment over images `i` (locations through EXISTS) and its parameters."""
        clauses: list[str] = []
        params: list[Any] = []
        for value, clause in (
            (self.taken_from, "i.taken_at >= %s"),
            (self.taken_to, "i.taken_at < %s"),
            (self.min_width, "i.width >= %s"),
            (self.min_height, "i.height >= %s"),
            (self.orientation, "i.orientation = %s"),
            (list(self.format), "i.format = ANY(%s)"),
            (self.camera_make, "lower(i.camera_make) = lower(%s)"),
            (self.camera_model, "lower(i.camera_model) = lower(%s)"),
        ):
            if value:
                clauses.append(clause)
                params.append(value)
        if self.has_gps is not None:
            clauses.append("i.latitude IS NOT NULL" if self.has_gps else "i.latitude IS NULL")
        if self.bbox:
            south, west, north, east = self.bbox
            clauses.append("i.latitude BETWEEN %s AND %s")
            params += [south, north]
            if west <= east:
                clauses.append("i.longitude BETWEEN %s AND %s")
                params += [west, east]
            else:  # the box crosses the antimeridian
                clauses.append("(i.longitude >= %s OR i.longitude <= %s)")
                params += [west, east]
        if self.favorite is not None:
            clauses.append("i.favorite" if self.favorite else "NOT i.favorite")
        location: list[str] = []
        for value, clause in ((list(self.source), "l.source = ANY(%s)"), (list(self.album), "l.album = ANY(%s)")):
            if value:
                location.append(clause)
                params.append(value)
        if self.path:
            root, _, prefix = self.path.partition("/")
            location.append("l.root = %s")
            params.append(root)
            if prefix:
                location.append(r"l.relpath LIKE %s ESCAPE '\'")
                params.append(re.sub(r"([\\%_])", r"\\\1", prefix) + "%")
        if location:
            clauses.append("EXISTS (SELECT 1 FROM locations l WHERE l.image_id = i.id AND "
                           + " AND ".join(location) + ")")
        return (" AND ".join(clauses) or "true"), params


# --- the query vector ---------------------------------------------------------------------------


_WEIGHT = re.compile(r"^(.*?)\^(-?\d+(?:\.\d+)?)$", re.S)


def split_weight(term: str, default: float = 1.0) -> tuple[str, float]:
    """'red car^1.5' -> ('red car', 1.5); a trailing ^number is a weight (Lucene's boost syntax)."""
    match = _WEIGHT.match(term.strip())
    if not match:
        return term.strip(), default
    weight = float(match.group(2))
    if not math.isfinite(weight) or not 0 < abs(weight) <= 100:
        raise QueryError(f"weight of {match.group(1)!r} must be between -100 and 100, not 0")
    return match.group(1).strip(), weight


def parse_like_term(term: str) -> tuple[int, float]:
    """'123^0.5' -> (123, 0.5): an indexed image's id with an optional weight.

    Only ASCII digits count: str.isdigit() also accepts '¹', which int() refuses. A number past
    bigint is a well-formed id of no image (404, as for /api/images/<id>), and never reaches int().
    """
    value, weight = split_weight(term)
    if not re.fullmatch(r"[0-9]+", value):
        raise QueryError(f"like: expected an image id (a whole number), got {value!r}")
    if len(value) > len(str(MAX_ID)):
        raise NotFound(f"there is no image {value[:24]}{'…' if len(value) > 24 else ''}")
    return check_image_id(int(value)), weight


@dataclass
class QuerySpec:
    """What to look for: each part is (value, weight); negatives are subtracted."""

    texts: list[tuple[str, float]] = field(default_factory=list)
    negative_texts: list[tuple[str, float]] = field(default_factory=list)
    image_ids: list[tuple[int, float]] = field(default_factory=list)
    uploads: list[tuple[bytes, float]] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.texts or self.image_ids or self.uploads)

    def describe(self) -> str:
        parts = [t for t, _ in self.texts] + [f"image {i}" for i, _ in self.image_ids]
        parts += ["uploaded image"] * len(self.uploads)
        text = " + ".join(parts)
        if self.negative_texts:
            text += " − " + " − ".join(t for t, _ in self.negative_texts)
        return text


def model_row(conn: psycopg.Connection, key: str) -> tuple[int, int]:
    row = conn.execute("SELECT id, dim FROM models WHERE name = %s", (key,)).fetchone()
    if row is None:
        raise QueryError(f"no image is indexed with model {key} yet: run `clipdex index` first")
    return row


def _is_unit(vector: np.ndarray, dim: int | None) -> bool:
    return ((dim is None or vector.shape == (dim,)) and bool(np.all(np.isfinite(vector)))
            and abs(float(np.linalg.norm(vector)) - 1.0) <= 0.01)


def text_vectors(conn: psycopg.Connection, model, model_id: int, texts: Sequence[str],
                 dim: int | None = None) -> np.ndarray:
    """Unit vectors of query texts, from the text cache or the model (which then fills the cache)."""
    rows = conn.execute(
        "SELECT query, embedding FROM text_embeddings WHERE model_id = %s AND query = ANY("
        "SELECT clipdex_query_key(t) FROM unnest(%s::text[]) t)", (model_id, list(texts))).fetchall()
    # Another role may have written the cache: a vector that is not a unit vector of this model's
    # size is ignored, embedded again and replaced.
    cached = {q: vector for q, v in rows if _is_unit(vector := np.asarray(v.to_numpy(), dtype=np.float32), dim)}
    keys = [conn.execute("SELECT clipdex_query_key(%s)", (t,)).fetchone()[0] for t in texts]
    missing = sorted({k for k in keys if k not in cached})
    if missing:
        fresh = model.encode_texts(missing)
        for key, vector in zip(missing, fresh):
            cached[key] = vector
        try:
            with conn.transaction():
                conn.execute(
                    "INSERT INTO text_embeddings (model_id, query, embedding) "
                    "SELECT %s, q, e FROM unnest(%s::text[], %b::halfvec[]) AS n(q, e) "
                    "ON CONFLICT (model_id, query) DO UPDATE SET embedding = EXCLUDED.embedding, used_at = now()",
                    (model_id, missing, [HalfVector(v) for v in fresh]))
        except psycopg.errors.InsufficientPrivilege:
            pass  # a read-only role searches fine; it just cannot fill the cache for psql
    return np.stack([cached[k] for k in keys]) if keys else np.zeros((0, 0), np.float32)


MAX_ID = 2**63 - 1


def check_image_id(image_id: int) -> int:
    if not 1 <= image_id <= MAX_ID:
        raise NotFound(f"there is no image {image_id}")
    return image_id


def image_vectors(conn: psycopg.Connection, model_id: int, ids: Sequence[int]) -> np.ndarray:
    for image_id in ids:
        check_image_id(image_id)
    rows = dict(conn.execute("SELECT image_id, embedding FROM embeddings WHERE model_id = %s "
                             "AND image_id = ANY(%s)", (model_id, list(ids))).fetchall())
    for image_id in ids:
        if image_id not in rows:
            raise NotFound(f"image {image_id} does not exist or has no vector for this model")
    return np.stack([np.asarray(rows[i].to_numpy(), dtype=np.float32) for i in ids])


def upload_vectors(model, uploads: Sequence[bytes], max_pixels: int, budget=None) -> np.ndarray:
    from clipdex.imaging import DecodeFailure, NotAnImage, decode

    images = []
    for data in uploads:
        try:
            images.append(decode(data, min_side=max(model.image_size), max_pixels=max_pixels, budget=budget).image)
        except NotAnImage as exc:
            raise QueryError(f"the uploaded file is not an image (it looks like {exc})") from None
        except DecodeFailure as exc:
            raise QueryError(f"cannot use the uploaded image: {exc}") from None
    return model.encode_images(images)


def combine(parts: list[tuple[np.ndarray, float]]) -> np.ndarray:
    total = sum(weight * vector for vector, weight in parts)
    norm = float(np.linalg.norm(total))
    if not math.isfinite(norm) or norm < 1e-6:
        raise QueryError("the positive and negative parts cancel out: nothing left to search for")
    return (total / norm).astype(np.float32)


def as_halfvec(vector: np.ndarray) -> HalfVector:
    return HalfVector(np.asarray(vector, dtype=np.float32))


# --- cursors ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cursor:
    """Everything the next page needs, in the link itself: the query vector (as float16, exactly
    as the database compares it), the filters, the page size and the last row of this page. No
    server state, so a read-only database role can page too."""

    vector: np.ndarray
    filters: dict[str, list[str]]
    limit: int
    distance: float
    image_id: int

    def encode(self) -> str:
        vector = base64.urlsafe_b64encode(self.vector.astype("<f2").tobytes()).decode()
        payload = json.dumps({"v": vector, "f": self.filters, "k": self.limit, "d": self.distance,
                              "i": self.image_id}, separators=(",", ":"))
        return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str, dim: int) -> "Cursor":
        try:
            data = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
            vector = np.frombuffer(base64.urlsafe_b64decode(data["v"]), dtype="<f2").astype(np.float32)
            cursor = cls(vector, {str(k): [str(x) for x in v] for k, v in data["f"].items()},
                         int(data["k"]), float(data["d"]), int(data["i"]))
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error, UnicodeDecodeError):
            raise QueryError("cursor: not a cursor this server handed out") from None
        if len(cursor.vector) != dim or not np.all(np.isfinite(cursor.vector)):
            raise QueryError("cursor: not a cursor for this model; run the search again")
        # A query vector is a unit vector (float16 keeps its norm within a few thousandths); a
        # zero or scaled vector would rank by nothing and score NaN.
        if abs(float(np.linalg.norm(cursor.vector)) - 1.0) > 0.01:
            raise QueryError("cursor: not a cursor this server handed out")
        if not (math.isfinite(cursor.distance) and -0.01 <= cursor.distance <= 2.01 and 1 <= cursor.image_id <= MAX_ID):
            raise QueryError("cursor: not a cursor this server handed out")
        return cursor


# --- the search -------------------------------------------------------------------------------


@dataclass
class Hit:
    id: int
    score: float        # cosine similarity, 1 = identical direction
    distance: float     # cosine distance used for ordering
    taken_at: datetime | None
    width: int
    height: int
    format: str
    source: str | None          # of the best location (an album copy first)
    sources: list[str]          # every source the image was found in
    album: str | None
    root: str | None
    path: str | None
    favorite: bool

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("score", "distance"):   # JSON has no NaN; a degenerate vector must not break it
            data[key] = data[key] if math.isfinite(data[key]) else None
        data["taken_at"] = self.taken_at.isoformat() if self.taken_at else None
        data["thumbnail_url"] = f"/thumbnails/{self.id}.webp"
        data["detail_url"] = f"/images/{self.id}"
        return data


@dataclass
class Page:
    hits: list[Hit]
    next_cursor: str | None
    strategy: str         # "exact" or "hnsw"
    filtered_rows: int | None   # rows the filters keep (capped), when filters are given

    def to_dict(self) -> dict[str, Any]:
        return {"results": [h.to_dict() for h in self.hits], "next_cursor": self.next_cursor,
                "strategy": self.strategy}


_DETAILS = (
    "SELECT p.id, p.taken_at, p.width, p.height, p.format, p.source, p.sources, p.album, p.root, p.path, "
    "p.favorite "
    "FROM photos p WHERE p.id = ANY(%s)"
)


def _count_filtered(conn: psycopg.Connection, model_id: int, where: str, params: list, cap: int) -> int:
    return conn.execute(
        f"SELECT count(*) FROM (SELECT 1 FROM images i WHERE {where} AND EXISTS (SELECT 1 FROM embeddings e "
        f"WHERE e.image_id = i.id AND e.model_id = %s) LIMIT %s) s", [*params, model_id, cap]).fetchone()[0]


def exact_scan_limit(conn: psycopg.Connection, limit: int) -> int:
    """How many filtered rows an exact sort may take before the index is cheaper.

    The exact sort costs a fixed time per filtered row (fetch the vector, one distance); the
    filtered index scan walks about limit / selectivity rows of the graph. With N vectors they
    break even near sqrt(3·limit·N) filtered rows (fitted on bench/search.py at 100k and 1M).
    """
    total = conn.execute("SELECT reltuples FROM pg_class WHERE oid = 'embeddings'::regclass").fetchone()[0]
    return int(min(EXACT_SCAN_MAX_ROWS, max(EXACT_SCAN_MIN_ROWS, math.sqrt(3 * limit * max(total, 1.0)))))


def ranked_ids(conn: psycopg.Connection, model_id: int, dim: int, query: np.ndarray, filters: Filters,
               limit: int, after: tuple[float, int] | None, *, iterative: bool,
               exact_max_rows: int | None = None,
               ef_search: int = EF_SEARCH) -> tuple[list[tuple[int, float]], str, int | None]:
    """The ids and distances of the next `limit` rows, and which strategy produced them.

    Every plan is made for the actual filter values (plan_cache_mode = force_custom_plan): a
    generic plan of a prepared statement cannot know whether a filter keeps 50 % or 0.05 % of
    the rows, and picks the wrong way to find them.
    """
    where, params = filters.sql()
    with conn.transaction():
        conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
        filtered = None
        if exact_max_rows is None:
            exact_max_rows = exact_scan_limit(conn, limit)
        if filters.active:
            filtered = _count_filtered(conn, model_id, where, params, exact_max_rows + 1)
            if filtered == 0:
                return [], "exact", 0
        use_index = filtered is None or filtered > exact_max_rows
        vector = as_halfvec(query)
        rows = _ranked(conn, model_id, dim if use_index else None, vector, where, params, limit, after,
                       iterative, ef_search)
        if use_index and len(rows) < limit:
            # Short: the scan bound was reached, or pgvector 0.7 has no iterative scan. Only an
            # exact sort can say whether more rows exist, and it gives them in the right order.
            exact = _ranked(conn, model_id, None, vector, where, params, limit, after, iterative, ef_search)
            return exact, "exact", filtered
        return rows, "hnsw" if use_index else "exact", filtered


def _ranked(conn: psycopg.Connection, model_id: int, index_dim: int | None, query: HalfVector, where: str,
            params: list, limit: int, after: tuple[float, int] | None, iterative: bool,
            ef_search: int) -> list[tuple[int, float]]:
    """One ranking query. With ``index_dim`` the distance is written exactly as the model's HNSW
    index expression (``embedding::halfvec(dim)``, model_id constant) so the planner can use it;
    without, the plain expression matches no index and the filtered rows are sorted exactly."""
    if index_dim is None:
        distance = "e.embedding <=> %s::halfvec"
    else:
        distance = f"e.embedding::halfvec({index_dim}) <=> %s::halfvec({index_dim})"
    keyset, keyset_params = "", []
    if after is not None:
        keyset = f" AND ({distance}, e.image_id) > (%s, %s)"
        keyset_params = [query, after[0], after[1]]
    sql = (f"SELECT e.image_id, {distance} AS distance FROM embeddings e JOIN images i ON i.id = e.image_id "
           f"WHERE e.model_id = {int(model_id)} AND {where}{keyset} ORDER BY distance, e.image_id LIMIT %s")
    if index_dim is not None:
        conn.execute(f"SET LOCAL hnsw.ef_search = {int(max(ef_search, min(1000, 2 * limit)))}")
        if iterative:
            conn.execute("SET LOCAL hnsw.iterative_scan = strict_order")
            conn.execute("SET LOCAL hnsw.max_scan_tuples = 200000")
    return [tuple(r) for r in conn.execute(sql, [query, *params, *keyset_params, limit])]


def search(db: Database, conn: psycopg.Connection, model_key: str, *, spec: QuerySpec | None = None,
           model=None, filters: Filters | None = None, limit: int = DEFAULT_PAGE,
           cursor: str | None = None, max_pixels: int = 100_000_000, ef_search: int = EF_SEARCH,
           decode_budget=None) -> Page:
    """One page of results. Either a query (spec + filters + limit) or a cursor from a page."""
    model_id, dim = model_row(conn, model_key)
    after = None
    if cursor:
        state = Cursor.decode(cursor, dim)
        filters = Filters.parse(state.filters)
        limit = state.limit
        if not 1 <= limit <= MAX_PAGE:
            raise QueryError("cursor: not a cursor this server handed out")
        query = state.vector
        after = (state.distance, state.image_id)
    else:
        if spec is None or spec.empty:
            raise QueryError("empty query: give a text, an image, or both")
        for text, _ in spec.texts + spec.negative_texts:
            check_text("q", text)
        if not 1 <= limit <= MAX_PAGE:
            raise QueryError(f"limit must be between 1 and {MAX_PAGE}")
        filters = filters or Filters()
        parts: list[tuple[np.ndarray, float]] = []
        all_texts = [t for t, _ in spec.texts] + [t for t, _ in spec.negative_texts]
        if all_texts:
            vectors = text_vectors(conn, model, model_id, all_texts, dim)
            weights = [w for _, w in spec.texts] + [-w for _, w in spec.negative_texts]
            parts += list(zip(vectors, weights))
        if spec.image_ids:
            parts += list(zip(image_vectors(conn, model_id, [i for i, _ in spec.image_ids]),
                              [w for _, w in spec.image_ids]))
        if spec.uploads:
            parts += list(zip(upload_vectors(model, [d for d, _ in spec.uploads], max_pixels, decode_budget),
                              [w for _, w in spec.uploads]))
        # Rounded to float16 once, here, so every page compares exactly the same vector.
        query = combine(parts).astype(np.float16).astype(np.float32)
    iterative = db.info.iterative_scan
    rows, strategy, filtered = ranked_ids(conn, model_id, dim, query, filters, limit + 1, after,
                                          iterative=iterative, ef_search=ef_search)
    more = len(rows) > limit
    rows = rows[:limit]
    details = {r[0]: r for r in conn.execute(_DETAILS, ([i for i, _ in rows],))}
    hits = [Hit(i, 1.0 - d, d, *details[i][1:]) for i, d in rows if i in details]
    next_cursor = None
    if more and rows:
        next_cursor = Cursor(query, filters.to_params(), limit, rows[-1][1], rows[-1][0]).encode()
    return Page(hits, next_cursor, strategy, filtered)
